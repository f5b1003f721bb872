"""Training engine on the real GAICD sample photos: checkpoints, exact resume, divergence, evaluation."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

import test as evaluation
import train_on_GAICD
from config_GAICD import Config
from generate_pseudo_heatmap import generate_heatmaps
from tests.conftest import build_gaicd_sample

FAST = ["--backbone", "mobilenetv2", "--pretrained", "false", "--device", "cpu", "--num_workers", "0",
        "--image_size", "128", "128", "--keep_aspect_ratio", "false", "--view_per_image", "16",
        "--warmup_epochs", "1", "--lr", "1e-3", "--no-progress", "--deterministic", "true"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = build_gaicd_sample(tmp_path_factory.mktemp("gaicd"))
    generate_heatmaps("GAICD", Config(data_root=str(root)), workers=0)
    return str(root)


def _state(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_continues_exactly(data_root, tmp_path):
    common = FAST + ["--data-root", data_root, "--max_epoch", "2", "--selection", "test"]
    straight = train_on_GAICD.main(common + ["--exp_root", str(tmp_path / "a"), "--exp_name", "run"])
    first = train_on_GAICD.main(common + ["--exp_root", str(tmp_path / "b"), "--exp_name", "run", "--max_epoch", "1"])
    checkpoint = os.path.join(first.exp_path, "checkpoints", "last.pth")
    resumed = train_on_GAICD.main(["--resume", checkpoint, "--max_epoch", "2", "--no-progress"])
    assert resumed.epoch == straight.epoch == 2
    expected, actual = _state(straight), _state(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    # a real change happened: training moved the weights away from the first epoch's
    assert any(not torch.equal(_state(first)[n], expected[n]) for n in expected)
    for name in ("results.csv", "config.json", "checkpoints/best-srcc.pth", "checkpoints/best-human_srcc.pth"):
        assert os.path.exists(os.path.join(straight.exp_path, name)), name
    assert os.listdir(os.path.join(straight.exp_path, "logs"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    trainer = train_on_GAICD.main(FAST + ["--data-root", data_root, "--max_epoch", "1", "--selection", "test",
                                          "--exp_root", str(tmp_path), "--exp_name", "nan"])
    checkpoint = os.path.join(trainer.exp_path, "checkpoints", "last.pth")
    before = hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    with pytest.raises(SystemExit, match=r"211958\.jpg.*last\.pth"):
        train_on_GAICD.main(["--resume", checkpoint, "--max_epoch", "2", "--content_loss_weight", "nan",
                             "--no-progress"])
    assert hashlib.sha256(open(checkpoint, "rb").read()).hexdigest() == before


def test_validation_protocol_reports_test_once(data_root, tmp_path):
    trainer = train_on_GAICD.main(FAST + ["--data-root", data_root, "--max_epoch", "1", "--selection", "val",
                                          "--val_fraction", "0.5", "--exp_root", str(tmp_path), "--exp_name", "v"])
    # the only training image is held out for validation, so nothing of the test split was used to select
    assert trainer.val_names == ["211958.jpg"]
    report = open(os.path.join(trainer.exp_path, "test_results.csv")).read()
    assert "selected_by" in report and "val srcc" in report


def test_warmup_cosine_matches_the_release_formula():
    import math
    for epoch in range(80):
        if epoch <= 5:
            expected = min(1.0, (epoch + 1) / 5)
        else:
            expected = 0.5 * (math.cos((epoch - 5) / 75 * math.pi) + 1)
        assert train_on_GAICD.warmup_cosine(epoch, 5, 80) == pytest.approx(expected)


def test_sample_views_keeps_valid_crops_only():
    batch = {"crop_valid": torch.tensor([[True] * 6, [True, True, False, False, False, False]]),
             "crop_box": torch.arange(48, dtype=torch.float32).reshape(2, 6, 4),
             "score": torch.tensor([[1.0, 2, 3, 4, 5, 6], [7, 8, float("nan"), float("nan"), float("nan"), float("nan")]])}
    torch.manual_seed(0)
    sampled = sample = train_on_GAICD.sample_views(batch, 4)
    assert sample["crop_box"].shape == (2, 4, 4)
    assert sampled["crop_valid"].tolist() == [[True] * 4, [True, True, False, False]]
    assert set(sampled["score"][0].tolist()) <= {1, 2, 3, 4, 5, 6} and len(set(sampled["score"][0].tolist())) == 4
    assert sorted(sampled["score"][1, :2].tolist()) == [7, 8]


def test_table_from_checkpoints(data_root, tmp_path):
    trainer = train_on_GAICD.main(FAST + ["--data-root", data_root, "--max_epoch", "1", "--selection", "test",
                                          "--exp_root", str(tmp_path), "--exp_name", "t"])
    checkpoint = os.path.join(trainer.exp_path, "checkpoints", "best-srcc.pth")
    out = tmp_path / "table"
    evaluation.main(["--table", checkpoint, "--out", str(out), "--data-root", data_root, "--skip-missing", "--num_workers", "0",
                     "--no-progress"])
    table = (tmp_path / "table.md").read_text()
    assert "GAICD-human acc5" in table and "best-srcc.pth" in table
    row = table.strip().splitlines()[-1].split("|")
    assert row[2].strip() != ""  # GAICD-human acc5 was evaluated; FCDB/FLMS cells stay empty
