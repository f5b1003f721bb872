"""train_on_CPC.py end to end on small generated data in the CPC, FCDB and FLMS release layouts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import train_on_CPC
from config_CPC import Config
from cropping_dataset import heat_map_sources
from tests.conftest import REPO_ROOT, require_shared, run_two_processes, small_training_options
from untils.demo_data import build_demo_dataset
from untils.pseudo_heatmaps import generate_heatmaps


def _write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The demo photos re-laid out as CPC (training) and FCDB / FLMS (evaluation), in the release formats."""
    root = tmp_path_factory.mktemp("cpc")
    demo = build_demo_dataset(root / "demo", num_train=6, num_test=4, seed=5, long_side=256)
    gaicd = Path(demo["path"])
    crops = json.loads((gaicd / "image_crop.json").read_text())
    people = json.loads((gaicd / "human_bboxes.json").read_text())
    from PIL import Image

    def copy(names, folder):
        for name in names:
            split = "train" if name in demo["train"] else "test"
            shutil.copy(gaicd / "images" / split / name, folder / name)

    sizes = {}
    for split in ("train", "test"):
        for name in demo[split]:
            with Image.open(gaicd / "images" / split / name) as image:
                sizes[name] = image.size
    (root / "CPCDataset" / "images").mkdir(parents=True)
    copy(demo["train"], root / "CPCDataset" / "images")
    _write(
        root / "CPCDataset" / "image_crop.json",
        {n: {"bboxes": crops[n]["bbox"], "scores": crops[n]["score"]} for n in demo["train"]},
    )
    _write(
        root / "CPCDataset" / "human_bboxes.json",
        {n: {"bbox": people[n], "weight": sizes[n][0], "height": sizes[n][1]} for n in demo["train"] if n in people},
    )
    test_names = demo["test"]
    humans = [n for n in test_names if n in people]
    (root / "FCDB" / "data").mkdir(parents=True)
    copy(test_names, root / "FCDB" / "data")
    best = {n: crops[n]["bbox"][0] for n in test_names}
    _write(root / "FCDB" / "image_crop.json", {n: [b[0], b[1], b[2] - b[0], b[3] - b[1]] for n, b in best.items()})
    _write(root / "FCDB" / "human_bboxes.json", {n: people[n] for n in humans})
    _write(root / "FCDB" / "data_split.json", {"train": [], "test": test_names, "human": humans})
    (root / "FLMS" / "image").mkdir(parents=True)
    copy(test_names, root / "FLMS" / "image")
    _write(root / "FLMS" / "image_crop.json", {n: crops[n]["bbox"][:3] for n in test_names})
    _write(root / "FLMS" / "human_bboxes.json", {n: people[n] for n in humans})
    shutil.copy(require_shared("pdefined_anchors.pkl"), root / "pdefined_anchors.pkl")
    cfg = Config(data_root=str(root))
    generate_heatmaps("CPC", heat_map_sources("CPC", cfg), cfg.heat_map_dir, workers=0)
    return root


FAST = small_training_options(128, 8) + [
    "--backbone",
    "mobilenetv2",
    "--max_epoch",
    "1",
    "--warmup_epochs",
    "0",
    "--batch_size",
    "2",
    "--images_per_step",
    "2",
    "--use_content_preserve",
    "false",
]


def test_cpc_training_selects_on_fcdb_and_flms(data_root, tmp_path):
    trainer = train_on_CPC.main(
        FAST + ["--data-root", str(data_root), "--selection", "test", "--exp_root", str(tmp_path), "--exp_name", "cpc"]
    )
    rows = list(csv.reader(open(Path(trainer.exp_path) / "results.csv")))
    header = rows[0]
    for column in ("FCDB_human_iou", "FCDB_human_disp", "FLMS_human_iou", "FCDB_iou", "FLMS_disp"):
        assert column in header, column
    values = dict(zip(header, rows[1], strict=True))
    assert 0 <= float(values["FCDB_iou"]) <= 1 and 0 <= float(values["FLMS_disp"]) <= 1
    assert (Path(trainer.exp_path) / "checkpoints" / "best-FCDB_human_iou.pth").exists()


def test_cpc_training_with_validation_reports_fcdb_flms_once(data_root, tmp_path):
    trainer = train_on_CPC.main(
        FAST
        + [
            "--data-root",
            str(data_root),
            "--selection",
            "val",
            "--val_fraction",
            "0.34",
            "--exp_root",
            str(tmp_path),
            "--exp_name",
            "cpc_val",
        ]
    )
    assert len(trainer.val_names) == 2
    report = list(csv.DictReader(open(Path(trainer.exp_path) / "test_results.csv")))
    assert {row["selected_by"] for row in report} >= {"val srcc"}
    assert all(0 <= float(row["FLMS_human_iou"]) <= 1 for row in report)


def test_cpc_training_under_torchrun_evaluates_and_reports_with_the_unwrapped_model(data_root, tmp_path):
    """Two processes (gloo): validation, FCDB/FLMS evaluation and the final report load and score the
    model itself, not its DistributedDataParallel wrapper."""
    result = run_two_processes(
        [
            str(REPO_ROOT / "train_on_CPC.py"),
            *FAST,
            "--batch_size",
            "4",
            "--data-root",
            str(data_root),
            "--selection",
            "val",
            "--val_fraction",
            "0.34",
            "--exp_root",
            str(tmp_path),
            "--exp_name",
            "cpc_ddp",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    report = list(csv.DictReader(open(tmp_path / "cpc_ddp" / "test_results.csv")))
    assert report and all(0 <= float(row["FLMS_human_iou"]) <= 1 for row in report)
