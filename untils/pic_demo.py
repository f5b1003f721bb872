"""The demo PIC prior: an embedding-variant prior trained offline, on the CPU, on generated PIC
users (``untils.pic_synthetic``: people in photos shipped in pip packages, users with geometry
tastes), so personalized cropping works on a fresh machine without data or network
(``python app.py --demo``). It is made by the PIC scripts themselves with small settings
(:func:`demo_prior_commands`: ``pretrain_PIC.py --demo``, then ``prior_PIC.py --demo``); it
exercises the loop and is no result of the paper.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from untils.pic_synthetic import GEOMETRY_GROUPS, OBJECTS_FILE, build_pic_benchmark

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_SUBFOLDER = "pic"
# the generated users: every geometry taste, people composited onto backgrounds (untils.demo_data)
DEMO_USERS: dict[str, Any] = {
    "train_users_per_group": 2,
    "test_users_per_group": 1,
    "train_images": 24,
    "test_images": 4,
    "images_per_train_user": 12,
    "long_side": 160,
    "candidates": "grid",
    "groups": GEOMETRY_GROUPS,
}
DEMO_IMAGE_SIZE = (128, 128)


def demo_folder(demo_dir: str) -> str:
    """Where the demo prior's data, experiments and checkpoints live: ``demo_dir/pic``."""
    return os.path.join(demo_dir, DEMO_SUBFOLDER)


def demo_prior_checkpoint(demo_dir: str) -> str:
    """The demo prior (written last, atomically: it exists only when complete)."""
    return os.path.join(demo_folder(demo_dir), "prior.pth")


def demo_pretrain_checkpoint(demo_dir: str) -> str:
    """The pre-trained model the demo prior starts from."""
    return os.path.join(demo_folder(demo_dir), "pretrain.pth")


def demo_prior_commands(demo_dir: str, python: str) -> list[list[str]]:
    """The command lines, run in order, that write :func:`demo_prior_checkpoint` (each one also
    works when a previous run of it was interrupted)."""
    return [
        [python, os.path.join(REPO_ROOT, script), "--demo", "--demo-dir", demo_dir, "--no-progress"]
        for script in ("pretrain_PIC.py", "prior_PIC.py")
    ]


def prepare_demo_data(demo_dir: str) -> str:
    """The generated users (``DEMO_USERS``) in ``demo_folder/data``, built when absent or
    incomplete; returns that data root."""
    data_root = os.path.join(demo_folder(demo_dir), "data")
    if not os.path.isfile(os.path.join(data_root, "PIC", OBJECTS_FILE)):  # written last
        print(f"generating the demo PIC users in {data_root} ...", flush=True)
        os.makedirs(data_root, exist_ok=True)
        for leftover in os.listdir(data_root):  # an interrupted build
            shutil.rmtree(os.path.join(data_root, leftover), ignore_errors=True)
        build_pic_benchmark(data_root, seed=0, **DEMO_USERS)
    return data_root


def demo_pretrain_options(demo_dir: str) -> dict[str, Any]:
    """``pretrain_PIC.py --demo``'s config options (the given ones win)."""
    return {
        "variant": "embedding",
        "data_root": prepare_demo_data(demo_dir),
        "exp_root": os.path.join(demo_folder(demo_dir), "experiments"),
        "exp_name": "pretrain",
        "pretrained": False,
        "device": "cpu",
        "num_workers": 0,
        "image_size": DEMO_IMAGE_SIZE,
        "keep_aspect_ratio": False,
        "images_per_step": 8,
        "batch_size": 8,
        "max_epoch": 16,
        "warmup_epochs": 1,
        "view_per_image": 32,
        "lr": 1e-3,
    }


def demo_prior_options(demo_dir: str) -> dict[str, Any]:
    """``prior_PIC.py --demo``'s config options (the given ones win); the fine-tuning ones are
    stored in the prior and used when a person personalizes it."""
    return {
        "data_root": os.path.join(demo_folder(demo_dir), "data"),
        "exp_root": os.path.join(demo_folder(demo_dir), "experiments"),
        "exp_name": "prior",
        "device": "cpu",
        "num_workers": 0,
        "prior_epochs": 20,
    }
