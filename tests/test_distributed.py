"""torchrun with 2 CPU processes (gloo) trains to the same weights as one process at the same global batch."""

from __future__ import annotations

import functools
import os

import pytest
import torch

import train_on_GAICD
from config_GAICD import PRESETS, Config
from tests.conftest import REPO_ROOT, process_alive, run_two_processes, small_training_options
from untils.training import Trainer

COMMON = small_training_options(128, 8) + [
    "--keep_aspect_ratio",
    "false",
    "--max_epoch",
    "1",
    "--warmup_epochs",
    "0",
    "--lr",
    "1e-3",
    "--selection",
    "test",
    "--deterministic",
    "true",
]


@pytest.mark.parametrize("backbone, batch_size", [("mobilenetv2", 2), ("vgg16", 4)])
def test_two_processes_match_one(six_image_demo, tmp_path, backbone, batch_size):
    """batch_size 2: one image per process per optimiser step; 4: two, the first backward without
    synchronisation (DistributedDataParallel.no_sync), the last step of the epoch with one image.

    Accumulating sums gradients in another order than one process does, and Adam magnifies the
    rounding of near-zero gradients: a few weights then differ by up to about 3e-6 (an Adam step here
    is 1e-3, so a process that missed the others' gradients would be off by that much). Where
    BatchNorm makes a gradient zero up to rounding (the bias of a layer that another BatchNorm
    follows), Adam turns that rounding into whole steps, so that case uses vgg16 (no BatchNorm).
    """
    options = COMMON + ["--data-root", six_image_demo, "--backbone", backbone, "--batch_size", str(batch_size)]
    # one thread in every process: Adam turns rounding differences between thread counts into visible ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_on_GAICD.main(options + ["--exp_root", str(tmp_path / "one"), "--exp_name", "run"])
    finally:
        torch.set_num_threads(threads)
    result = run_two_processes(
        [str(REPO_ROOT / "train_on_GAICD.py"), *options, "--exp_root", str(tmp_path / "two"), "--exp_name", "run"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    two = torch.load(tmp_path / "two" / "run" / "checkpoints" / "last.pth", weights_only=True)
    reference = dict(single.core.named_parameters())
    assert two["epoch"] == 1 and two["step"] == 3  # 6 images over 2 ranks: 3 batches of one image each
    # parameters only: under DDP, BatchNorm running statistics are rank 0's (vgg16 has none)
    for name, value in reference.items():
        torch.testing.assert_close(
            two["model"][name],
            value.detach(),
            rtol=1e-6,
            atol=1e-7 if batch_size == 2 else 1e-5,
            msg=lambda text, name=name: f"{name}: {text}",
        )
    # only rank 0 wrote logs and checkpoints; the metrics were gathered from both ranks
    assert sorted(os.listdir(tmp_path / "two")) == ["run"]
    assert "test: " in result.stdout


DIVERGING_TRAINING = """
import train_on_GAICD
from untils.cli import run_script

real_loss = train_on_GAICD.crop_training_loss


def nan_loss(*args, **kwargs):
    loss, parts = real_loss(*args, **kwargs)
    return loss * float("nan"), parts


train_on_GAICD.crop_training_loss = nan_loss
raise SystemExit(run_script(train_on_GAICD.main))
"""


def test_a_diverged_two_process_run_stops_on_every_rank_with_a_clear_message(six_image_demo, tmp_path):
    """A NaN loss on both ranks ends the run (the error path tears the process group down without a
    barrier) with the training's own message, not a hang."""
    diverging = tmp_path / "diverging_train_on_GAICD.py"  # train_on_GAICD with its loss made NaN
    diverging.write_text(DIVERGING_TRAINING)
    result = run_two_processes(
        [
            str(diverging),
            *COMMON,
            "--data-root",
            six_image_demo,
            "--backbone",
            "mobilenetv2",
            "--batch_size",
            "2",
            "--exp_root",
            str(tmp_path / "runs"),
            "--exp_name",
            "nan",
        ],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert result.stderr.count("training stopped: loss is nan") == 2, result.stderr[-3000:]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_parameter_gets_a_gradient_from_the_training_loss(preset, tmp_path):
    """DistributedDataParallel is built without ``find_unused_parameters``: every parameter of every
    ablation model must take part in the training loss, also for a batch whose only image has no
    person (the partition-aware module runs and is then deselected) and for one with a person."""
    from cropping_model import build_crop_model, crop_training_loss
    from untils.boxes import partition_masks

    _, options = PRESETS[preset]
    cfg = Config(**{"backbone": "mobilenetv2", "pretrained": False, "exp_root": str(tmp_path), **options})
    torch.manual_seed(0)
    model = build_crop_model(cfg, cfg.model_type).train()
    trainer = Trainer.__new__(Trainer)  # only compute_loss's state
    trainer.model = model
    trainer.loss_fn = functools.partial(crop_training_loss, cfg=cfg, score_mean=3.0)
    for human in ([-1.0, -1.0, -1.0, -1.0], [20.0, 10.0, 60.0, 90.0]):
        human_box = torch.tensor([[human]])
        batch = {
            "image": torch.randn(1, 3, 96, 128),
            "human_box": human_box,
            "crop_box": torch.tensor([[[0.0, 0.0, 96.0, 80.0], [16.0, 8.0, 128.0, 96.0], [8.0, 8.0, 72.0, 72.0]]]),
            "crop_valid": torch.ones(1, 3, dtype=torch.bool),
            "score": torch.tensor([[2.0, 3.5, 4.0]]),
            "heat_map": torch.rand(1, 1, 64, 64),
            "partition_mask": partition_masks(human_box, 128, 96),
        }
        model.zero_grad(set_to_none=True)
        loss, _, _ = trainer.compute_loss(batch)
        loss.backward()
        unused = [name for name, parameter in model.named_parameters() if parameter.grad is None]
        assert not unused, f"preset {preset}, person {human}: no gradient for {unused}"


HANGING_SCRIPT = """
import os, time
import torch.distributed as dist
dist.init_process_group("gloo")
open(f"worker-{os.getpid()}", "w").close()


def wait_forever():
    while True:
        time.sleep(1)


wait_forever()
"""


def test_a_hanging_two_process_run_fails_with_each_ranks_stack_and_leaves_no_process(tmp_path):
    """The CI run once hung for good here: torchrun's workers live in sessions of their own, so
    killing the launcher's process group left them running, holding the output pipes open."""
    (tmp_path / "hang.py").write_text(HANGING_SCRIPT)
    with pytest.raises(pytest.fail.Exception) as failure:
        run_two_processes([str(tmp_path / "hang.py")], cwd=tmp_path, timeout=20)
    workers = [int(path.name.split("-")[1]) for path in tmp_path.glob("worker-*")]
    assert len(workers) == 2, "both ranks should have started within the time limit"
    assert "did not finish in 20 s" in str(failure.value)
    assert str(failure.value).count("in wait_forever") >= 2  # one stack per rank
    assert not [pid for pid in workers if process_alive(pid)]
