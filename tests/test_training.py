"""Training engine on the real GAICD sample photos: checkpoints, exact resume, divergence, evaluation."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torch.nn.functional as F

import test as evaluation
import train_on_GAICD
import untils.evaluation
from config_GAICD import Config
from cropping_dataset import heat_map_sources
from tests.conftest import build_gaicd_sample, small_training_options
from untils.inference import move_batch
from untils.pseudo_heatmaps import generate_heatmaps
from untils.runtime import autocast, seed_everything
from untils.training import Trainer, item_seed, sample_views, warmup_cosine

FAST = small_training_options(128, 16) + [
    "--backbone",
    "mobilenetv2",
    "--keep_aspect_ratio",
    "false",
    "--warmup_epochs",
    "1",
    "--lr",
    "1e-3",
    "--deterministic",
    "true",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = build_gaicd_sample(tmp_path_factory.mktemp("gaicd"))
    cfg = Config(data_root=str(root))
    generate_heatmaps("GAICD", heat_map_sources("GAICD", cfg), cfg.heat_map_dir, workers=0)
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


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_root, tmp_path, request):
    trainer = train_on_GAICD.main(
        FAST
        + [
            "--data-root",
            data_root,
            "--max_epoch",
            "1",
            "--selection",
            "test",
            "--exp_root",
            str(tmp_path),
            "--exp_name",
            "nan",
        ]
    )
    checkpoint = os.path.join(trainer.exp_path, "checkpoints", "last.pth")
    before = hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    request.getfixturevalue("diverging_loss")
    with pytest.raises(SystemExit, match=r"211958\.jpg.*last\.pth"):
        train_on_GAICD.main(["--resume", checkpoint, "--max_epoch", "2", "--no-progress"])
    assert hashlib.sha256(open(checkpoint, "rb").read()).hexdigest() == before


@pytest.fixture(scope="module")
def two_training_images(tmp_path_factory):
    """The sample in the flat layout with 211958.jpg and 265813.jpg in the training split."""
    import json

    root = build_gaicd_sample(tmp_path_factory.mktemp("gaicd_two"), flat=True)
    split = {"train": ["211958.jpg", "265813.jpg"], "test": ["297406.jpg"]}
    (root / "GAICD" / "original_data_split.json").write_text(json.dumps(split))
    cfg = Config(data_root=str(root))
    generate_heatmaps("GAICD", heat_map_sources("GAICD", cfg), cfg.heat_map_dir, workers=0)
    return str(root)


def test_validation_protocol_reports_test_once(two_training_images, tmp_path):
    trainer = train_on_GAICD.main(
        FAST
        + [
            "--data-root",
            two_training_images,
            "--max_epoch",
            "1",
            "--selection",
            "val",
            "--val_fraction",
            "0.5",
            "--exp_root",
            str(tmp_path),
            "--exp_name",
            "v",
        ]
    )
    # one training image is held out for validation, the other is trained on; the test split selects nothing
    assert len(trainer.val_names) == 1 and trainer.val_names[0] in ("211958.jpg", "265813.jpg")
    assert len(trainer.train_set) == 1
    report = open(os.path.join(trainer.exp_path, "test_results.csv")).read()
    assert "selected_by" in report and "val srcc" in report


def test_validation_split_that_leaves_nothing_to_train_on_is_an_error(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"val_fraction=0\.5 holds out 1 of the 1 training images"):
        train_on_GAICD.main(
            FAST
            + [
                "--data-root",
                data_root,
                "--max_epoch",
                "1",
                "--selection",
                "val",
                "--val_fraction",
                "0.5",
                "--exp_root",
                str(tmp_path),
                "--exp_name",
                "v",
            ]
        )


def test_warmup_cosine_matches_the_release_formula():
    import math

    for epoch in range(80):
        if epoch <= 5:
            expected = min(1.0, (epoch + 1) / 5)
        else:
            expected = 0.5 * (math.cos((epoch - 5) / 75 * math.pi) + 1)
        assert warmup_cosine(epoch, 5, 80) == pytest.approx(expected)


def test_sample_views_keeps_valid_crops_only():
    batch = {
        "crop_valid": torch.tensor([[True] * 6, [True, True, False, False, False, False]]),
        "crop_box": torch.arange(48, dtype=torch.float32).reshape(2, 6, 4),
        "score": torch.tensor([[1.0, 2, 3, 4, 5, 6], [7, 8, float("nan"), float("nan"), float("nan"), float("nan")]]),
    }
    torch.manual_seed(0)
    sampled = sample = sample_views(batch, 4)
    assert sample["crop_box"].shape == (2, 4, 4)
    assert sampled["crop_valid"].tolist() == [[True] * 4, [True, True, False, False]]
    assert set(sampled["score"][0].tolist()) <= {1, 2, 3, 4, 5, 6} and len(set(sampled["score"][0].tolist())) == 4
    assert sorted(sampled["score"][1, :2].tolist()) == [7, 8]


def test_table_from_checkpoints(data_root, tmp_path):
    trainer = train_on_GAICD.main(
        FAST
        + [
            "--data-root",
            data_root,
            "--max_epoch",
            "1",
            "--selection",
            "test",
            "--exp_root",
            str(tmp_path),
            "--exp_name",
            "t",
        ]
    )
    checkpoint = os.path.join(trainer.exp_path, "checkpoints", "best-srcc.pth")
    out = tmp_path / "table"
    evaluation.main(
        [
            "--table",
            checkpoint,
            "--out",
            str(out),
            "--data-root",
            data_root,
            "--skip-missing",
            "--num_workers",
            "0",
            "--no-progress",
        ]
    )
    table = (tmp_path / "table.md").read_text()
    assert "GAICD-human acc5" in table and "best-srcc.pth" in table
    row = table.strip().splitlines()[-1].split("|")
    assert row[2].strip() != ""  # GAICD-human acc5 was evaluated; FCDB/FLMS cells stay empty


def _first_batch(trainer):
    batch = next(iter(trainer.loader(trainer.epoch_batches(0))))
    seeds = [item_seed(trainer.cfg.seed, 0, name) for name in batch["name"]]
    return move_batch(sample_views(batch, trainer.cfg.view_per_image, seeds), trainer.device)


def _loss_and_gradients(trainer, batch, dtype):
    """The loss, its parts (as floats) and the gradients of the parameters outside and inside the backbone."""
    trainer.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    with autocast(trainer.device, dtype):
        loss, parts, _ = trainer.compute_loss(batch)
    loss.backward()
    named = [(n, p.grad.reshape(-1)) for n, p in trainer.core.named_parameters() if p.grad is not None]
    head = torch.cat([g for n, g in named if not n.startswith("backbone.")])
    backbone = torch.cat([g for n, g in named if n.startswith("backbone.")])
    return loss.detach(), {key: float(value) for key, value in parts.items()}, head, backbone


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_loss_and_gradients_are_close_to_fp32(data_root, tmp_path, dtype):
    """Under autocast the forward runs in low precision and the losses in fp32: the loss and the
    gradient of the same weights on the same batch stay close to the plain fp32 ones.

    Only the layers after the backbone are compared in direction: the early layers of a random-init
    backbone (BatchNorm on one image) turn rounding into gradients of another direction.
    """
    cfg = Config(
        data_root=data_root,
        backbone="mobilenetv2",
        pretrained=False,
        image_size=(128, 128),
        keep_aspect_ratio=False,
        view_per_image=16,
        num_workers=0,
        selection="test",
        data_augmentation=False,
        exp_root=str(tmp_path),
    )
    seed_everything(cfg.seed)
    trainer = train_on_GAICD.build_trainer(cfg, str(tmp_path / "exp"), torch.device("cpu"), progress=False)
    batch = _first_batch(trainer)
    loss32, parts32, head32, backbone32 = _loss_and_gradients(trainer, batch, None)
    loss_low, parts_low, head_low, backbone_low = _loss_and_gradients(trainer, batch, dtype)
    assert loss_low.dtype == torch.float32  # the losses are computed in fp32
    assert float(loss_low) == pytest.approx(float(loss32), rel=0.05)
    assert parts_low["content_loss"] == pytest.approx(parts32["content_loss"], rel=0.05)
    cosine = F.cosine_similarity(head_low.double(), head32.double(), dim=0)
    assert cosine > 0.95, f"gradient direction differs from fp32: cosine {cosine:.4f}"
    assert not torch.equal(head_low, head32)  # the low-precision path really ran
    assert torch.isfinite(backbone_low).all()
    assert float(backbone_low.norm()) == pytest.approx(float(backbone32.norm()), rel=0.5)


# One step per epoch here, and the loss scaler skips the first ones (its initial scale overflows the
# fp16 gradients of this random-init model): PyTorch then warns that the schedule stepped first.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_fp16_training_with_loss_scaling_resumes_exactly(data_root, tmp_path):
    # 4 views an image: the CPU's fp16 convolution backward is slow, and its time grows with the crops
    common = FAST + [
        "--view_per_image",
        "4",
        "--data-root",
        data_root,
        "--max_epoch",
        "8",
        "--selection",
        "test",
        "--precision",
        "fp16",
        "--channels_last",
        "true",
        "--eval_freq",
        "100",
        "--lr_scheduler",
        "step",
    ]  # lr independent of max_epoch
    straight = train_on_GAICD.main(common + ["--exp_root", str(tmp_path / "a"), "--exp_name", "run"])
    steps_taken = max(int(state["step"]) for state in straight.optimizer.state.values())
    assert 2 <= steps_taken < 8 and straight.scaler.get_scale() < 2.0**16  # overflowing steps were skipped
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in straight.core.parameters() if p.dim() == 4)
    first = train_on_GAICD.main(common + ["--exp_root", str(tmp_path / "b"), "--exp_name", "run", "--max_epoch", "7"])
    checkpoint = os.path.join(first.exp_path, "checkpoints", "last.pth")
    assert torch.load(checkpoint, weights_only=True)["scaler"]["scale"] == first.scaler.get_scale()
    resumed = train_on_GAICD.main(["--resume", checkpoint, "--max_epoch", "8", "--no-progress"])
    assert resumed.cfg.precision == "fp16" and resumed.scaler.get_scale() == straight.scaler.get_scale()
    expected, actual = _state(straight), _state(resumed)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert any(not torch.equal(_state(first)[n], expected[n]) for n in expected)


def test_evaluation_uses_the_configured_precision_and_batching(data_root, tmp_path, monkeypatch):
    trainer = train_on_GAICD.main(
        FAST
        + [
            "--data-root",
            data_root,
            "--max_epoch",
            "1",
            "--selection",
            "test",
            "--exp_root",
            str(tmp_path),
            "--exp_name",
            "e",
        ]
    )
    checkpoint = os.path.join(trainer.exp_path, "checkpoints", "last.pth")
    calls = []
    original = untils.evaluation.run_model

    def spy(model, batch, autocast_dtype=None, channels_last=False):
        calls.append((autocast_dtype, channels_last, batch["image"].shape[0]))
        return original(model, batch, autocast_dtype, channels_last)

    monkeypatch.setattr(untils.evaluation, "run_model", spy)
    evaluation.main(
        [
            "--checkpoint",
            checkpoint,
            "--dataset",
            "GAICD",
            "--data-root",
            data_root,
            "--num_workers",
            "0",
            "--no-progress",
            "--precision",
            "bf16",
            "--channels_last",
            "true",
            "--images-per-batch",
            "2",
        ]
    )
    # the two GAICD test photos have one resized size (128x128): one forward of both, in bf16, channels-last
    assert calls == [(torch.bfloat16, True, 2)]


class _Crash(Exception):
    pass


def test_crash_mid_epoch_resumes_exactly_from_the_last_optimiser_step(six_image_demo, tmp_path, monkeypatch):
    """Batches of 2 images accumulated one at a time; last.pth every 3 steps lands only between
    optimiser steps (after step 4, not 3); a crash at step 5 resumes to the uninterrupted weights."""
    common = FAST + [
        "--data-root",
        six_image_demo,
        "--max_epoch",
        "1",
        "--selection",
        "test",
        "--batch_size",
        "2",
        "--checkpoint_steps",
        "3",
    ]
    straight = train_on_GAICD.main(common + ["--exp_root", str(tmp_path / "a"), "--exp_name", "run"])
    saved = []
    original_save, original_loss = Trainer.save_training_state, Trainer.compute_loss

    def recording_save(self):
        saved.append((self.step, self.batch_in_epoch))
        return original_save(self)

    def crashing_loss(self, batch):
        if self.step == 5:
            raise _Crash()
        return original_loss(self, batch)

    monkeypatch.setattr(Trainer, "save_training_state", recording_save)
    monkeypatch.setattr(Trainer, "compute_loss", crashing_loss)
    with pytest.raises(_Crash):
        train_on_GAICD.main(common + ["--exp_root", str(tmp_path / "b"), "--exp_name", "run"])
    assert saved == [(4, 4)]
    monkeypatch.undo()
    checkpoint = tmp_path / "b" / "run" / "checkpoints" / "last.pth"
    assert torch.load(checkpoint, weights_only=True)["batch_in_epoch"] == 4
    resumed = train_on_GAICD.main(["--resume", str(checkpoint), "--no-progress"])
    assert resumed.step == straight.step == 6
    # the resumed epoch's logged loss is the whole epoch's, not only the batches after the crash
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]
    expected, actual = _state(straight), _state(resumed)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
