"""test.py and the evaluation it runs: no metric computed from values that are not finite numbers,
and no table written over one the user has.

The scripts run as subprocesses, as a user starts them; each failure must be one ``error:`` line
naming the file (or checkpoint) and the value, with exit status 2 and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from config_GAICD import Config
from cropping_model import build_crop_model
from tests.conftest import REPO_ROOT, require_shared
from untils.checkpoint import config_to_dict, save_atomic
from untils.dataset_errors import DatasetError
from untils.dataset_files import read_crop_annotations, read_human_boxes
from untils.metrics import gaicd_metrics

FLOAT32_MAX = float(np.finfo(np.float32).max)  # about 3.4e38: larger values are infinite in float32


def _run(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "test.py"), *arguments, "--no-progress"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a refused run (exit status 2, no traceback)."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _checkpoint(folder: Path, name: str = "model.pth", poisoned: bool = False) -> Path:
    """An untrained mobilenetv2 HCIC checkpoint; ``poisoned``: every weight NaN, so every score is NaN."""
    cfg = Config(backbone="mobilenetv2", pretrained=False)
    torch.manual_seed(0)
    model = build_crop_model(cfg)
    if poisoned:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float("nan"))
    path = folder / name
    save_atomic({"model": model.state_dict(), "config": config_to_dict(cfg), "model_type": "HCIC"}, str(path))
    return path


# ----- annotations: finite as the float32 values the model and metrics use -------------------------------
@pytest.mark.parametrize("bad_value", [1e300, -1e39, FLOAT32_MAX * 1.01])
def test_scores_beyond_float32_are_refused_with_the_value(bad_value, tmp_path):
    path = tmp_path / "image_crop.json"
    boxes = [[0, 0, 10, 10]] * 3
    path.write_text(
        json.dumps(
            {
                "a.jpg": {"bbox": boxes, "score": [1.0, 2.0, 3.0]},
                "b.jpg": {"bbox": boxes, "score": [1.0, bad_value, 3.0]},
            }
        )
    )
    with pytest.raises(DatasetError) as refused:
        read_crop_annotations(str(path), "bbox", "score")
    message = str(refused.value)
    assert (
        str(path) in message
        and f"b.jpg: boxes and scores must be finite float32 numbers, found {bad_value}" in message
        and "a.jpg" not in message
    )


def test_largest_float32_score_and_boxes_are_accepted(tmp_path):
    path = tmp_path / "image_crop.json"
    path.write_text(json.dumps({"a.jpg": {"bbox": [[0, 0, 10, 10]], "score": [FLOAT32_MAX]}}))
    assert read_crop_annotations(str(path), "bbox", "score")["a.jpg"].scores[0] == FLOAT32_MAX


def test_person_box_beyond_float32_is_refused(tmp_path):
    path = tmp_path / "human_bboxes.json"
    path.write_text(json.dumps({"a.jpg": [0, 0, 1e300, 10]}))
    with pytest.raises(DatasetError, match=r"a\.jpg: the person box \[0, 0, 1e\+300, 10\] must hold finite float32"):
        read_human_boxes(str(path))


def test_infinite_ground_truth_is_refused_by_the_metrics():
    gt = np.arange(12, dtype=np.float64)
    gt[3] = np.inf
    with pytest.raises(ValueError, match="image 0: ground-truth scores must be finite, found inf"):
        gaicd_metrics([gt], [np.arange(12, dtype=np.float64)])


def test_score_of_1e300_stops_test_py_naming_file_and_value(six_image_demo, tmp_path):
    """It passed the float64 check, became inf in float32, and test.py printed pcc=nan with exit status 0."""
    annotations = json.loads((Path(six_image_demo) / "GAICD" / "image_crop.json").read_text())
    name = json.loads((Path(six_image_demo) / "GAICD" / "original_data_split.json").read_text())["test"][0]
    annotations[name]["score"][0] = 1e300
    path = tmp_path / "image_crop.json"
    path.write_text(json.dumps(annotations))
    result = _run(
        [
            "--checkpoint",
            str(_checkpoint(tmp_path)),
            "--dataset",
            "GAICD",
            "--data-root",
            six_image_demo,
            "--GAIC_anno",
            str(path),
        ]
    )
    assert str(path) in _error_line(result)
    assert f"{name}: boxes and scores must be finite float32 numbers, found 1e+300" in result.stderr
    assert "nan" not in result.stdout


# ----- model outputs -------------------------------------------------------------------------------------
def test_nan_scores_stop_test_py_naming_the_checkpoint(six_image_demo, tmp_path):
    checkpoint = _checkpoint(tmp_path, "poisoned.pth", poisoned=True)
    result = _run(["--checkpoint", str(checkpoint), "--dataset", "GAICD", "--data-root", six_image_demo])
    line = _error_line(result)
    assert line.startswith(f"error: checkpoint {checkpoint}: the model gave NaN or infinite scores on 2 of 2 images")
    assert "nan" not in result.stdout


def test_nan_scores_stop_the_anchor_evaluation_naming_the_checkpoint(tmp_path):
    """FCDB picks the best-scored anchor: with NaN scores it picked one anyway, and reported its IoU."""
    from PIL import Image

    fcdb = tmp_path / "data" / "FCDB"
    (fcdb / "data").mkdir(parents=True)
    Image.new("RGB", (64, 48), (120, 80, 40)).save(fcdb / "data" / "photo.png")
    (fcdb / "image_crop.json").write_text(json.dumps({"photo.png": [4, 4, 40, 30]}))
    (fcdb / "human_bboxes.json").write_text(json.dumps({"photo.png": [10, 10, 30, 40]}))
    (fcdb / "data_split.json").write_text(json.dumps({"train": [], "test": ["photo.png"], "human": ["photo.png"]}))
    checkpoint = _checkpoint(tmp_path, "poisoned.pth", poisoned=True)
    result = _run(
        [
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "FCDB",
            "--data-root",
            str(tmp_path / "data"),
            "--predefined_pkl",
            str(require_shared("pdefined_anchors.pkl")),
        ]
    )
    line = _error_line(result)
    assert line.startswith(f"error: checkpoint {checkpoint}: the model gave NaN or infinite scores on 1 of 1 images")
    assert "iou=" not in result.stdout


# ----- the table ------------------------------------------------------------------------------------------
def test_table_is_not_written_over_existing_files_without_overwrite(tmp_path):
    """Every dataset is missing and skipped (an empty data root), so the table has empty cells."""
    checkpoint = _checkpoint(tmp_path)
    out = tmp_path / "results" / "table"
    out.parent.mkdir()
    Path(f"{out}.md").write_text("the user's own notes\n")
    options = ["--table", str(checkpoint), "--out", str(out), "--data-root", str(tmp_path / "empty"), "--skip_missing"]
    line = _error_line(_run(options))
    assert f"{out}.md already exists" in line and "--overwrite" in line
    assert Path(f"{out}.md").read_text() == "the user's own notes\n" and not Path(f"{out}.csv").exists()

    Path(f"{out}.csv").write_text("model\n")
    line = _error_line(_run(options))
    assert f"{out}.md and {out}.csv already exist" in line

    replaced = _run(options + ["--overwrite"])
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert Path(f"{out}.md").read_text().startswith("| model | GAICD-human acc5 |")
    # 20 metric columns, every dataset skipped
    assert Path(f"{out}.csv").read_text().splitlines()[1] == "model.pth" + "," * 20
    assert sorted(os.listdir(out.parent)) == ["table.csv", "table.md"]  # no temporary file left
