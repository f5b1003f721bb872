"""crop.py's outputs are safe (issue 22): inputs never replaced, one run per output folder, sets
complete or absent, files checked whole, stale outputs removed, broken models and inputs refused."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import crop
from tests.conftest import REPO_ROOT
from tests.test_crop import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hcic.pth", "HCIC")


def run_tool(args: list, capsys) -> tuple[int, str]:
    code = crop.main([str(a) for a in args] + ["--workers", "0"])
    return code, capsys.readouterr().err


def small_photo(path: Path) -> Path:
    Image.fromarray(data.astronaut()[::2, ::2]).save(path)
    return path


def test_an_input_is_never_an_output(checkpoint, tmp_path, capsys):
    small_photo(tmp_path / "a.png")
    users_own = small_photo(tmp_path / "a_any_crop1.png")  # the user's photo, named like an output of a.png
    before = users_own.read_bytes()
    code, err = run_tool([tmp_path, "--checkpoint", checkpoint, "--out", tmp_path, "--overwrite", "--top-k", 1], capsys)
    assert code == 1 and "a_any_crop1.png would replace an input photo" in err
    assert users_own.read_bytes() == before


def test_a_second_run_into_the_folder_is_refused_and_a_stale_lock_taken_over(checkpoint, tmp_path, capsys):
    photo = small_photo(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".crop-lock-0-of-1"
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "shard": "0/1"}))  # alive
    code, err = run_tool([photo, "--checkpoint", checkpoint, "--out", out], capsys)
    assert code == 2 and f"pid {os.getppid()} on {socket.gethostname()}" in err and not (out / "a.json").exists()
    sharded = out / ".crop-lock-0-of-2"
    lock.rename(sharded)  # a live sharded run of another shard count: refused too
    code, err = run_tool([photo, "--checkpoint", checkpoint, "--out", out], capsys)
    assert code == 2 and "shard 0/1" in err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sharded.unlink()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "shard": "0/1"}))
    code, err = run_tool([photo, "--checkpoint", checkpoint, "--out", out], capsys)
    assert code == 0, err
    assert (out / "a.json").exists() and not lock.exists()  # taken over, then released


def test_a_full_disk_leaves_no_partial_file_and_names_it(checkpoint, tmp_path):
    photo = small_photo(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()

    def small_file_limit() -> None:  # files over 20 kB cannot be written: like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    completed = subprocess.run(
        [
            sys.executable,
            "crop.py",
            str(photo),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--top-k",
            "1",
            "--workers",
            "0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_file_limit,
    )
    assert completed.returncode == 1
    failed = [line for line in completed.stderr.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "could not write a_any_crop1.png" in failed[0]
    assert sorted(p.name for p in out.iterdir()) == []  # no crop, no temporary file, no JSON


def test_overwrite_with_a_smaller_top_k_removes_stale_crops(checkpoint, tmp_path, capsys):
    photo = small_photo(tmp_path / "a.png")
    out = tmp_path / "out"
    code, err = run_tool(
        [photo, "--checkpoint", checkpoint, "--out", out, "--top-k", 3, "--aspect-ratio", "any", "1:1"], capsys
    )
    assert code == 0, err
    (out / "b_any_crop1.png").write_text("another photo's crop")
    code, err = run_tool([photo, "--checkpoint", checkpoint, "--out", out, "--top-k", 1, "--overwrite"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_any_crop1.png", "b_any_crop1.png"]


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "nan.pth", "HCIC")
    content = torch.load(path, weights_only=True)
    content["model"]["fc_layer.bias"] = torch.full_like(content["model"]["fc_layer.bias"], float("nan"))
    torch.save(content, path)
    code, err = run_tool([small_photo(tmp_path / "a.png"), "--checkpoint", path, "--out", tmp_path / "out"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "nan.pth" in errors[0] and "non-finite" in errors[0]
    assert not (tmp_path / "out" / "a.json").exists()


def test_a_48_bit_png_keeps_16_bits_per_channel(checkpoint, tmp_path, capsys):
    import cv2

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, size=(200, 300, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1])  # OpenCV writes BGR
    code, err = run_tool(
        [tmp_path / "deep.png", "--checkpoint", checkpoint, "--out", tmp_path / "out", "--top-k", 1], capsys
    )
    assert code == 0, err
    x1, y1, x2, y2 = json.loads((tmp_path / "out" / "deep.json").read_text())["results"][0]["crops"][0]["box"]
    saved = cv2.imread(str(tmp_path / "out" / "deep_any_crop1.png"), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint16 and np.array_equal(saved[..., ::-1], rgb[y1:y2, x1:x2])


def test_broken_symlinks_are_reported(checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    small_photo(folder / "a.png")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    code, err = run_tool([folder, "--checkpoint", checkpoint, "--out", tmp_path / "out"], capsys)
    assert code == 0 and "broken symbolic link" in err and "gone.jpg" in err


def test_duplicate_keys_in_human_boxes_are_refused(checkpoint, tmp_path, capsys):
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"a.png": [1, 2, 30, 40], "a.png": [5, 6, 70, 80]}')
    code, err = run_tool(
        [
            small_photo(tmp_path / "a.png"),
            "--checkpoint",
            checkpoint,
            "--out",
            tmp_path / "out",
            "--human-boxes",
            boxes,
        ],
        capsys,
    )
    assert code == 2 and "'a.png' appears twice" in err and "boxes.json" in err
