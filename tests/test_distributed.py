"""torchrun with 2 CPU processes (gloo) trains to the same weights as one process at the same global batch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

import train_on_GAICD
from config_GAICD import Config
from generate_pseudo_heatmap import generate_heatmaps
from tests.conftest import REPO_ROOT
from untils.demo_data import build_demo_dataset

COMMON = ["--pretrained", "false", "--device", "cpu", "--num_workers", "0",
          "--image_size", "128", "128", "--keep_aspect_ratio", "false", "--view_per_image", "8",
          "--max_epoch", "1", "--warmup_epochs", "0", "--lr", "1e-3",
          "--selection", "test", "--deterministic", "true", "--no-progress"]


def run_two_processes(arguments: list[str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2`` (a free port each time); the whole process group
    is killed when it outlives ``timeout``, so no stray rank keeps running."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                *arguments], cwd=cwd, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("backbone, batch_size", [("mobilenetv2", 2), ("vgg16", 4)])
def test_two_processes_match_one(tmp_path, backbone, batch_size):
    """batch_size 2: one image per process per optimiser step; 4: two, the first backward without
    synchronisation (DistributedDataParallel.no_sync), the last step of the epoch with one image.

    Accumulating sums gradients in another order than one process does, and Adam magnifies the
    rounding of near-zero gradients: a few weights then differ by up to about 3e-6 (an Adam step here
    is 1e-3, so a process that missed the others' gradients would be off by that much). Where
    BatchNorm makes a gradient zero up to rounding (the bias of a layer that another BatchNorm
    follows), Adam turns that rounding into whole steps, so that case uses vgg16 (no BatchNorm).
    """
    data = tmp_path / "data"
    build_demo_dataset(data, num_train=6, num_test=2, seed=3, long_side=256)
    generate_heatmaps("GAICD", Config(data_root=str(data)), workers=0)
    options = COMMON + ["--data-root", str(data), "--backbone", backbone, "--batch_size", str(batch_size)]
    # one thread in every process: Adam turns rounding differences between thread counts into visible ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_on_GAICD.main(options + ["--exp_root", str(tmp_path / "one"), "--exp_name", "run"])
    finally:
        torch.set_num_threads(threads)
    result = run_two_processes([str(REPO_ROOT / "train_on_GAICD.py"), *options, "--exp_root", str(tmp_path / "two"),
                                "--exp_name", "run"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    two = torch.load(tmp_path / "two" / "run" / "checkpoints" / "last.pth", weights_only=False)
    reference = dict(single.core.named_parameters())
    assert two["epoch"] == 1 and two["step"] == 3  # 6 images over 2 ranks: 3 batches of one image each
    # parameters only: under DDP, BatchNorm running statistics are rank 0's (vgg16 has none)
    for name, value in reference.items():
        torch.testing.assert_close(two["model"][name], value.detach(), rtol=1e-6, atol=1e-7 if batch_size == 2 else 1e-5,
                                   msg=lambda text: f"{name}: {text}")
    # only rank 0 wrote logs and checkpoints; the metrics were gathered from both ranks
    assert sorted(os.listdir(tmp_path / "two")) == ["run"]
    assert "test: " in result.stdout
