"""Hostile inputs: crafted pickles must not run code through any entry point.

Each crafted file's payload would create a marker file. Every entry point must refuse the file
with an error naming it, exit non-zero, and leave no marker. The command-line tools run as
subprocesses, as a user would start them.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO_ROOT, require_shared
from untils.candidates import NUM_PREDEFINED_ANCHORS, load_predefined_anchors
from untils.checkpoint import CheckpointError, read_checkpoint, save_atomic

FORMATS = {"zip": True, "legacy": False}  # torch.save's _use_new_zipfile_serialization


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _evil_checkpoint(folder: Path, file_format: str) -> tuple[Path, Path]:
    """A checkpoint that looks like ours (weights, config) and carries the payload; and its marker."""
    marker = folder / f"ran-{file_format}"
    path = folder / f"evil-{file_format}.pth"
    content = {
        "model": {"weight": torch.zeros(2)},
        "config": {"backbone": "mobilenetv2"},
        "model_type": "HCIC",
        "optimizer": {},
        "extra": _Payload(marker),
    }
    torch.save(content, path, _use_new_zipfile_serialization=FORMATS[file_format])
    return path, marker


def _evil_anchors(folder: Path) -> tuple[Path, Path]:
    """A pickle where the anchors file would be: a valid first row, then the payload."""
    marker = folder / "ran-anchors"
    path = folder / "pdefined_anchors.pkl"
    path.write_bytes(pickle.dumps([[0.0, 0.0, 1.0, 1.0], _Payload(marker)], protocol=2))
    return path, marker


def _run(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _assert_refused(result: subprocess.CompletedProcess, path: Path, marker: Path) -> None:
    output = result.stdout + result.stderr
    assert not marker.exists(), f"the payload ran:\n{output[-3000:]}"
    assert result.returncode != 0, output[-3000:]
    assert str(path) in result.stderr, result.stderr[-3000:]


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(path)
    return path


# ----- checkpoints through the command-line tools -----------------------------------------------------
CHECKPOINT_COMMANDS = {
    "crop": lambda evil, photo, out: ["crop.py", str(photo), "--checkpoint", str(evil), "--out", str(out)],
    "crop-detector": lambda evil, photo, out: [
        "crop.py",
        str(photo),
        "--allow-untrained",
        "--detect-human",
        "--detector-weights",
        str(evil),
        "--out",
        str(out),
    ],
    "test": lambda evil, photo, out: ["test.py", "--checkpoint", str(evil), "--no-progress"],
    "train-resume": lambda evil, photo, out: ["train_on_GAICD.py", "--resume", str(evil), "--no-progress"],
    "train_on_CPC-resume": lambda evil, photo, out: ["train_on_CPC.py", "--resume", str(evil), "--no-progress"],
    "pretrain_PIC-resume": lambda evil, photo, out: [
        "pretrain_PIC.py",
        "--variant",
        "embedding",
        "--resume",
        str(evil),
        "--no-progress",
    ],
    "prior_PIC": lambda evil, photo, out: ["prior_PIC.py", "--checkpoint", str(evil), "--no-progress"],
    "finetune_PIC": lambda evil, photo, out: ["finetune_PIC.py", "--checkpoint", str(evil), "--no-progress"],
}
# Both formats reach the same torch.load: the legacy one is tried on one tool of each kind, to keep time.
LEGACY_FORMAT_TOOLS = ("crop", "test", "train-resume", "prior_PIC", "finetune_PIC")


@pytest.mark.parametrize(
    "entry_point, file_format",
    [(tool, "zip") for tool in CHECKPOINT_COMMANDS] + [(tool, "legacy") for tool in LEGACY_FORMAT_TOOLS],
)
def test_malicious_checkpoint_is_refused_by_every_tool(entry_point, file_format, tmp_path, photo):
    evil, marker = _evil_checkpoint(tmp_path, file_format)
    out = tmp_path / "out"
    result = _run(CHECKPOINT_COMMANDS[entry_point](evil, photo, out))
    _assert_refused(result, evil, marker)
    assert "may run code" in result.stderr and "--trust-checkpoint" in result.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing written


# ----- checkpoints through the API ------------------------------------------------------------------
@pytest.mark.parametrize("file_format", FORMATS)
def test_read_checkpoint_refuses_objects_with_one_line_naming_the_file(file_format, tmp_path):
    evil, marker = _evil_checkpoint(tmp_path, file_format)
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(str(evil))
    message = str(refused.value)
    assert not marker.exists()
    assert str(evil) in message and "posix.system" in message and "--trust-checkpoint" in message
    assert "\n" not in message


@pytest.mark.parametrize("file_format", FORMATS)
def test_trusted_checkpoint_is_unpickled_as_asked(file_format, tmp_path):
    """``trusted`` really loads everything: the payload runs (which is why it is never the default)."""
    evil, marker = _evil_checkpoint(tmp_path, file_format)
    content = read_checkpoint(str(evil), trusted=True)
    assert marker.exists() and content["extra"] == 0  # os.system's exit status


def test_own_checkpoint_loads_without_trust(tmp_path):
    """What our tools save (weights, config, optimizer state, numbers, strings) is plain data."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saved = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": {"backbone": "vgg16", "image_size": [256, 256], "loss_type": ("L1", "rank"), "exp_name": None},
        "model_type": "GAIC",
        "epoch": 3,
        "metrics": {"srcc": 0.5},
    }
    path = tmp_path / "ours.pth"
    save_atomic(saved, str(path))
    content = read_checkpoint(str(path))
    assert torch.equal(content["model"]["weight"], model.weight.detach())
    assert content["optimizer"]["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert content["config"] == saved["config"] and content["epoch"] == 3


# ----- the predefined anchors file --------------------------------------------------------------------
def test_real_anchors_file_loads_and_matches_an_independent_parse():
    path = require_shared("pdefined_anchors.pkl")
    anchors = load_predefined_anchors(path)
    with open(path, "rb") as handle:  # the trusted shared file only: the reference parse
        reference = np.array(pickle.load(handle, encoding="iso-8859-1"), dtype=np.float32)
    assert anchors.shape == (NUM_PREDEFINED_ANCHORS, 4) and anchors.dtype == torch.float32
    assert np.array_equal(anchors.numpy(), reference)
    # the file's first two rows, read off its opcodes with pickletools
    assert torch.equal(anchors[:2], torch.tensor([[0.0, 0.0, 0.9, 0.675], [0.0, 0.075, 0.9, 0.75]]))


def test_malicious_anchors_file_is_refused_by_the_loader(tmp_path):
    evil, marker = _evil_anchors(tmp_path)
    with pytest.raises(ValueError) as refused:
        load_predefined_anchors(evil)
    assert not marker.exists()
    assert str(evil) in str(refused.value) and "posix.system" in str(refused.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"anchors": [[0.0, 0.0, 1.0, 1.0]]}, "not a pickled list"),
        ([["0.1", "0.1", "0.9", "0.9"]] * NUM_PREDEFINED_ANCHORS, "not a pickled list"),  # numbers as text
        ([[0.0, 0.0, 1.0, 1.0]] * (NUM_PREDEFINED_ANCHORS - 1) + [[0.0, 0.0, float("nan"), 1.0]], "finite"),
        ([[0.0, 0.0, 1.0, 1.0]] * (NUM_PREDEFINED_ANCHORS - 1) + [[0.0, 0.0, float("inf"), 1.0]], "finite"),
        ([[0.0, 0.0, 1.0, 1.5]] * NUM_PREDEFINED_ANCHORS, r"\[0, 1\]"),
        ([[0.0, 0.0, 1.0]] * NUM_PREDEFINED_ANCHORS, "shape"),
    ],
)
def test_anchors_file_with_other_content_is_refused(content, expected, tmp_path):
    path = tmp_path / "anchors.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=expected) as refused:
        load_predefined_anchors(path)
    assert str(path) in str(refused.value)


def test_malicious_anchors_file_is_refused_by_the_fcdb_evaluation(tmp_path, photo):
    """``test.py --dataset FCDB`` with a tiny FCDB-layout dataset and a real (untrained) checkpoint."""
    from config_GAICD import Config
    from cropping_model import build_crop_model
    from untils.checkpoint import config_to_dict

    cfg = Config(backbone="mobilenetv2", pretrained=False)
    checkpoint = tmp_path / "model.pth"
    save_atomic(
        {"model": build_crop_model(cfg).state_dict(), "config": config_to_dict(cfg), "model_type": "HCIC"},
        str(checkpoint),
    )
    fcdb = tmp_path / "data" / "FCDB"
    (fcdb / "data").mkdir(parents=True)
    photo.rename(fcdb / "data" / photo.name)
    (fcdb / "image_crop.json").write_text(json.dumps({photo.name: [4, 4, 40, 30]}))
    (fcdb / "human_bboxes.json").write_text(json.dumps({photo.name: [10, 10, 30, 40]}))
    (fcdb / "data_split.json").write_text(json.dumps({"train": [], "test": [photo.name], "human": [photo.name]}))
    evil, marker = _evil_anchors(tmp_path)
    result = _run(
        [
            "test.py",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "FCDB",
            "--data_root",
            str(tmp_path / "data"),
            "--predefined_pkl",
            str(evil),
            "--no-progress",
        ]
    )
    _assert_refused(result, evil, marker)
    assert "posix.system" in result.stderr


# ----- files that are no checkpoint, too large once unpacked, or hold a bad config: one line -----------
def _bad_checkpoint(folder: Path, kind: str) -> Path:
    if kind == "directory":
        (folder / "folder.pth").mkdir()
        return folder / "folder.pth"
    path = folder / f"{kind}.pth"
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps({"model": {"w": [0.0]}}, protocol=4))
    elif kind == "inflating":
        plain = folder / "zeros.pth"
        torch.save({"model": {"w": torch.zeros(16 * 2**20)}}, plain)
        with zipfile.ZipFile(plain) as original, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as packed:
            for entry in original.infolist():
                packed.writestr(entry.filename, original.read(entry.filename))
    else:  # a saved config whose reduced_dim is text
        from config_GAICD import Config
        from cropping_model import build_crop_model
        from untils.checkpoint import config_to_dict

        cfg = Config(backbone="mobilenetv2", pretrained=False)
        config = {**config_to_dict(cfg), "reduced_dim": "32"}
        save_atomic({"model": build_crop_model(cfg).state_dict(), "config": config, "model_type": "HCIC"}, str(path))
    return path


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("directory", "is a directory"),
        ("raw-pickle", "not a PyTorch checkpoint (zip) file"),
        ("inflating", "inflate"),
        ("bad-config", "reduced_dim='32'"),
    ],
)
def test_bad_checkpoint_gets_one_error_line_from_test_py(kind, expected, tmp_path):
    path = _bad_checkpoint(tmp_path, kind)
    result = _run(["test.py", "--checkpoint", str(path), "--no-progress"])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 2 and lines[0].startswith("error: ") and str(path) in lines[0] and expected in lines[0], lines
    assert lines[1] == "(--debug shows the traceback)" and "weights_only" not in result.stderr


# ----- person boxes in messages: plain numbers ---------------------------------------------------------
@pytest.mark.parametrize(
    "box, expected",
    [
        ((10, 10, 5, 20), "person box [10.0, 10.0, 5.0, 20.0] must have x2 > x1 and y2 > y1"),
        (np.array([200.5, 200, 300, 300]), "person box [200.5, 200.0, 300.0, 300.0] lies outside the 100x80 photo"),
    ],
)
def test_bad_person_box_is_printed_as_plain_numbers(box, expected):
    """numpy 2 writes the numbers of list(array) as np.float64(10.0)."""
    from untils.photos import PhotoError, checked_person_box

    with pytest.raises(PhotoError) as refused:
        checked_person_box(box, 100, 80)
    assert str(refused.value) == expected


def test_resumed_checkpoint_with_a_bad_saved_option_gets_one_error_line(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.pth"  # inside an experiment folder: resume may continue there
    path.parent.mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text('{"exp_name": "run"}')
    save_atomic(
        {
            "model": {"w": torch.zeros(1)},
            "optimizer": {},
            "config": {"backbone": "mobilenetv2", "loss_type": "L1Loss", "exp_name": "run"},
        },
        str(path),
    )
    result = _run(["train_on_GAICD.py", "--resume", str(path), "--no-progress"])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr[-3000:]
    assert lines[0] == (
        f"error: {path}: its saved config option loss_type='L1Loss' is not of the option's type (list[str])"
    )
