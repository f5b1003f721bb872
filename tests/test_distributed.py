"""torchrun with 2 CPU processes (gloo) trains to the same weights as one process at the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import train_on_GAICD
from config_GAICD import Config
from generate_pseudo_heatmap import generate_heatmaps
from tests.conftest import REPO_ROOT
from untils.demo_data import build_demo_dataset

COMMON = ["--backbone", "mobilenetv2", "--pretrained", "false", "--device", "cpu", "--num_workers", "0",
          "--image_size", "128", "128", "--keep_aspect_ratio", "false", "--view_per_image", "8",
          "--max_epoch", "1", "--warmup_epochs", "0", "--lr", "1e-3", "--batch_size", "2",
          "--selection", "test", "--deterministic", "true", "--no-progress"]


def test_two_processes_match_one(tmp_path):
    data = tmp_path / "data"
    build_demo_dataset(data, num_train=6, num_test=2, seed=3, long_side=256)
    generate_heatmaps("GAICD", Config(data_root=str(data)), workers=0)
    options = COMMON + ["--data-root", str(data)]
    # one thread in every process: Adam turns rounding differences between thread counts into visible ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_on_GAICD.main(options + ["--exp_root", str(tmp_path / "one"), "--exp_name", "run"])
    finally:
        torch.set_num_threads(threads)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
         str(REPO_ROOT / "train_on_GAICD.py"), *options, "--exp_root", str(tmp_path / "two"), "--exp_name", "run"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    two = torch.load(tmp_path / "two" / "run" / "checkpoints" / "last.pth", weights_only=False)
    reference = dict(single.core.named_parameters())
    assert two["epoch"] == 1 and two["step"] == 3  # 6 images over 2 ranks, one image per step each
    # parameters only: BatchNorm running statistics are per process under DDP (vgg16 has none)
    for name, value in reference.items():
        torch.testing.assert_close(two["model"][name], value.detach(), rtol=1e-6, atol=1e-7, msg=name)
    # only rank 0 wrote logs and checkpoints; the metrics were gathered from both ranks
    assert sorted(os.listdir(tmp_path / "two")) == ["run"]
    assert "test: " in result.stdout
