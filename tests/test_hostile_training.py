"""Careless and hostile input to the datasets and the training scripts: NaN annotations, duplicate
names, concurrent runs, failed starts, bad option values, a diverged first epoch."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import train_on_GAICD
from config_GAICD import Config
from cropping_dataset import DatasetError, GAICDataset, heat_map_sources
from tests.conftest import REPO_ROOT, build_gaicd_sample, small_training_options
from untils.atomic import write_text_atomic
from untils.pseudo_heatmaps import generate_heatmaps

FAST = small_training_options(96, 8) + [
    "--backbone",
    "mobilenetv2",
    "--keep_aspect_ratio",
    "false",
    "--max_epoch",
    "1",
    "--warmup_epochs",
    "0",
]


@pytest.fixture
def sample_root(tmp_path) -> Path:
    return build_gaicd_sample(tmp_path / "data")


def _edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


@pytest.mark.parametrize(
    "field, index, value",
    [("bbox", (3, 1), float("nan")), ("score", (5,), float("inf")), ("score", (0,), float("nan"))],
)
def test_non_finite_crop_annotations_are_refused_before_anything_is_written(sample_root, field, index, value):
    def poison(content):
        target = content["297406.jpg"][field]
        for step in index[:-1]:
            target = target[step]
        target[index[-1]] = value

    _edit_json(sample_root / "GAICD" / "image_crop.json", poison)
    cfg = Config(data_root=str(sample_root))
    with pytest.raises(DatasetError, match=r"297406\.jpg: boxes and scores must be finite"):
        generate_heatmaps("GAICD", heat_map_sources("GAICD", cfg), cfg.heat_map_dir, workers=0)
    assert not (Path(cfg.heat_map_dir) / "GAICD" / "mask").exists() or not any(
        (Path(cfg.heat_map_dir) / "GAICD" / "mask").iterdir()
    )
    with pytest.raises(DatasetError, match=r"297406\.jpg"):
        GAICDataset(cfg, split="test", augment=False)


def test_non_finite_person_box_is_refused(sample_root):
    _edit_json(sample_root / "GAICD" / "human_bboxes.json", lambda c: c["297406.jpg"].__setitem__(2, float("nan")))
    with pytest.raises(DatasetError, match=r"297406\.jpg: the person box .* finite"):
        GAICDataset(Config(data_root=str(sample_root)), split="test", augment=False)


def test_a_name_listed_twice_in_a_split_is_refused(sample_root):
    _edit_json(sample_root / "GAICD" / "original_data_split.json", lambda c: c["train"].append("297406.jpg"))
    with pytest.raises(DatasetError, match=r"lists 1 image\(s\) twice: 297406\.jpg"):
        GAICDataset(Config(data_root=str(sample_root)), split="all", augment=False)


def test_a_json_key_given_twice_is_refused(sample_root):
    path = sample_root / "GAICD" / "human_bboxes.json"
    text = path.read_text()
    path.write_text(text[:-1] + ', "297406.jpg": [1, 2, 3, 4]}')
    with pytest.raises(DatasetError, match=r"gives 1 key\(s\) twice: 297406\.jpg"):
        GAICDataset(Config(data_root=str(sample_root)), split="test", augment=False)


@pytest.mark.parametrize(
    "option, value",
    [
        ("--display_freq", "0"),
        ("--visualize_freq", "0"),
        ("--warmup_epochs", "-3"),
        ("--checkpoint_steps", "-1"),
        ("--save_freq", "-1"),
        ("--lr", "0"),
        ("--view_per_image", "-2"),
    ],
)
def test_numeric_options_are_validated_before_anything_is_made(tmp_path, option, value):
    with pytest.raises(ValueError, match=option.lstrip("-")):
        train_on_GAICD.main(FAST + ["--data-root", str(tmp_path), "--exp_root", str(tmp_path / "exp"), option, value])
    assert not (tmp_path / "exp").exists()


def test_a_failed_start_leaves_no_experiment_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        train_on_GAICD.main(
            FAST + ["--data-root", str(tmp_path / "nowhere"), "--exp_root", str(tmp_path / "exp"), "--exp_name", "run"]
        )
    assert not (tmp_path / "exp" / "run").exists()


def test_a_second_run_in_the_same_experiment_is_refused(six_image_demo, tmp_path):
    first = train_on_GAICD.main(
        FAST + ["--data-root", six_image_demo, "--exp_root", str(tmp_path), "--exp_name", "run"]
    )
    checkpoint = Path(first.checkpoint_dir) / "last.pth"
    with open(Path(first.exp_path) / ".lock", "a") as holder:  # as a running training holds it
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit, match="another run is using the experiment folder"):
            train_on_GAICD.main(["--resume", str(checkpoint), "--max_epoch", "2", "--no-progress"])
    resumed = train_on_GAICD.main(["--resume", str(checkpoint), "--max_epoch", "2", "--no-progress"])
    assert resumed.epoch == 2


def test_atomic_writes_from_many_threads_never_collide(tmp_path):
    target, errors = tmp_path / "results.csv", []

    def write(index: int) -> None:
        try:
            for repeat in range(20):
                write_text_atomic(str(target), f"{index},{repeat}\n")
        except OSError as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and target.read_text().count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_divergence_before_any_checkpoint_says_so(six_image_demo, tmp_path, diverging_loss):
    with pytest.raises(SystemExit, match="loss is nan .* no training checkpoint was saved yet"):
        train_on_GAICD.main(FAST + ["--data-root", six_image_demo, "--exp_root", str(tmp_path)])


def test_command_line_errors_are_one_line_without_a_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train_on_GAICD.py"),
            *FAST,
            "--data-root",
            str(tmp_path / "nowhere"),
            "--exp_root",
            str(tmp_path / "exp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: GAICD split file not found") and "Traceback" not in result.stderr
    debug = subprocess.run(
        [sys.executable, str(REPO_ROOT / "test.py"), "--checkpoint", str(tmp_path / "none.pth"), "--debug"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_gaic_official_preset_trains_an_epoch(six_image_demo, tmp_path):
    """GAIC's release recipe end to end: its model, preprocessing and photometric augmentation."""
    trainer = train_on_GAICD.main(
        [
            "--preset",
            "GAIC-official",
            "--pretrained",
            "false",
            "--device",
            "cpu",
            "--num_workers",
            "0",
            "--max_epoch",
            "1",
            "--view_per_image",
            "8",
            "--no-progress",
            "--data-root",
            six_image_demo,
            "--exp_root",
            str(tmp_path),
            "--exp_name",
            "gaic",
        ]
    )
    assert trainer.cfg.model_type == "GAIC-official" and trainer.cfg.image_preprocessing == "gaic"
    assert type(trainer.core).__name__ == "GAICOfficialModel" and trainer.history
    assert trainer.train_set.augment
