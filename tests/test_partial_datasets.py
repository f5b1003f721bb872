"""A GAICD folder holding 3 of its 1,236 photos: --skip-missing evaluates and processes what is there."""

from __future__ import annotations

import shutil

import pytest
import torch

import generate_pseudo_heatmap
import test as evaluation
from config_GAICD import Config
from cropping_dataset import DatasetError, GAICDataset
from cropping_model import build_crop_model
from tests.conftest import build_gaicd_sample, require_shared


@pytest.fixture
def partial_root(tmp_path):
    """The sample's three photos with the real, complete annotation and split files."""
    root = build_gaicd_sample(tmp_path / "data")
    for name in ("image_crop.json", "human_bboxes.json", "original_data_split.json", "human_data_split.json"):
        shutil.copy(require_shared(f"human_bboxes/GAICD/{name}"), root / "GAICD" / name)
    return root


def test_without_the_option_the_error_says_it_exists(partial_root):
    with pytest.raises(DatasetError, match=r"(?s)198 problem\(s\).*--skip-missing uses the images that are there"):
        GAICDataset(Config(data_root=str(partial_root)), split="test", augment=False)


def test_evaluation_uses_the_photos_that_are_there(partial_root, tmp_path, capsys):
    torch.manual_seed(0)
    model = build_crop_model(Config(backbone="mobilenetv2", pretrained=False))
    torch.save(
        {"model": model.state_dict(), "model_type": "HCIC", "config": {"backbone": "mobilenetv2"}},
        tmp_path / "model.pth",
    )
    evaluation.main(
        [
            "--checkpoint",
            str(tmp_path / "model.pth"),
            "--dataset",
            "GAICD",
            "GAICD-human",
            "--data-root",
            str(partial_root),
            "--skip-missing",
            "--num_workers",
            "0",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert "198 of 200 images are not there and were skipped" in printed
    assert "49 of 50 images are not there and were skipped" in printed  # the human-centric test split
    assert "GAICD: acc1_5=" in printed and "GAICD-human: acc1_5=" in printed


def test_heat_maps_for_the_photos_that_are_there(partial_root, capsys):
    paths = generate_pseudo_heatmap.main(
        ["--data-root", str(partial_root), "--skip-missing", "--num-workers", "0", "--no-progress"]
    )
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == ["211958.png", "265813.png", "297406.png"]
    assert "1233 of 1236 images are not there and were skipped" in capsys.readouterr().out
