"""``bench_model.py --only epoch``: one training epoch of GAICD's size through the real training loop
(``train_on_GAICD.GAICDTrainer.train_epoch``) over in-memory images, and its table."""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_timing import PERSON_BOX, Setting, resident_bytes, synchronize  # noqa: E402

from config_GAICD import Config  # noqa: E402
from cropping_model import HumanCentricCroppingModel, crop_training_loss  # noqa: E402
from untils.boxes import HEAT_MAP_SIZE, partition_masks  # noqa: E402
from untils.candidates import gaic_grid_candidates  # noqa: E402

GAICD_TRAIN_IMAGES = 1036


class InMemoryGAICD(Dataset):
    """``count`` GAICD-shaped training items made in memory: a random ``height`` x ``width`` image
    with its GAIC-grid crops and their scores, a person and a pseudo heat map (the training set's
    interface: ``names``, ``score_mean``, ``resized_size_of``). Decoding and resizing JPEGs is left
    out; the DataLoader's workers do that off the training step's critical path."""

    def __init__(self, count: int, height: int, width: int) -> None:
        self.names = [f"in_memory_{index:04d}.jpg" for index in range(count)]
        self.score_mean = 3.0
        self.size = (width, height)
        self.crop_box = gaic_grid_candidates(width, height)
        self.human_box = torch.tensor([PERSON_BOX]) * torch.tensor([width / 352, height / 256] * 2)
        self.partition_mask = partition_masks(self.human_box, width, height)

    def __len__(self) -> int:
        return len(self.names)

    def resized_size_of(self, index: int) -> tuple[int, int]:
        return self.size

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        width, height = self.size
        return {
            "image": torch.randn(3, height, width, generator=generator),
            "crop_box": self.crop_box,
            "human_box": self.human_box,
            "has_human": True,
            "partition_mask": self.partition_mask,
            "width": width,
            "height": height,
            "name": self.names[index],
            "flipped": False,
            "score": 1 + 4 * torch.rand(len(self.crop_box), generator=generator),
            "heat_map": torch.rand(1, HEAT_MAP_SIZE, HEAT_MAP_SIZE, generator=generator),
            "has_heat_map": True,
        }


def timed_epoch(trainer, images: int, height: int, width: int) -> float:
    """Seconds of one ``train_epoch`` of the trainer over ``images`` in-memory images."""
    trainer.train_set = InMemoryGAICD(images, height, width)
    synchronize(trainer.device)
    begin = time.perf_counter()
    trainer.train_epoch()
    synchronize(trainer.device)
    return time.perf_counter() - begin


def synchronising_lines(trainer, height: int, width: int) -> dict[str, int]:
    """Host-device synchronisations of a one-image training epoch (one step) on CUDA, counted by the
    Python line that caused each (``torch.cuda.set_sync_debug_mode("warn")``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            timed_epoch(trainer, 1, height, width)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    root = Path(__file__).resolve().parent.parent
    lines = collections.Counter(
        f"{os.path.relpath(warning.filename, root)}:{warning.lineno}"
        for warning in caught
        if "synchronizing CUDA operation" in str(warning.message)
    )
    return dict(lines.most_common())


def training_epoch(backbone: str, setting: Setting, args: argparse.Namespace) -> dict:
    """One training epoch of the paper's recipe through ``GAICDTrainer.train_epoch``, after two
    warm-up epochs of ``--epoch-warmup`` images; fewer images than ``--epoch-images`` when the
    second warm-up predicts more than ``--epoch-budget-s`` seconds (the result is then extrapolated)."""
    from train_on_GAICD import GAICDTrainer  # the training scripts import far more than the rest needs

    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[setting.dtype]
    with tempfile.TemporaryDirectory() as exp_path:
        cfg = Config(
            backbone=backbone,
            pretrained=False,
            device=str(setting.device),
            precision=precision,
            channels_last=setting.channels_last,
            num_workers=args.epoch_workers,
            view_per_image=args.views,
            exp_root=exp_path,
        )
        torch.manual_seed(0)
        model = HumanCentricCroppingModel(cfg, loadweights=False)
        train_set = InMemoryGAICD(args.epoch_warmup, args.height, args.width)
        loss_fn = functools.partial(crop_training_loss, cfg=cfg, score_mean=train_set.score_mean)
        trainer = GAICDTrainer(cfg, exp_path, setting.device, model, train_set, None, loss_fn, progress=False)
        timed_epoch(trainer, args.epoch_warmup, args.height, args.width)  # first calls: kernels, allocator
        warmup_seconds = timed_epoch(trainer, args.epoch_warmup, args.height, args.width)
        images = args.epoch_images
        if args.epoch_budget_s is not None:
            images = max(1, min(images, int(args.epoch_budget_s * args.epoch_warmup / warmup_seconds)))
        if setting.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(setting.device)
        seconds = timed_epoch(trainer, images, args.height, args.width)
        peak_memory = resident_bytes(setting.device)
        syncs = synchronising_lines(trainer, args.height, args.width) if setting.device.type == "cuda" else None
        trainer.writer.close()
    return {
        "images": images,
        "seconds": seconds,
        "warmup_images": args.epoch_warmup,
        "warmup_seconds": warmup_seconds,
        "gaicd_epoch_seconds": seconds * GAICD_TRAIN_IMAGES / images,
        "peak_memory_mb": peak_memory / 2**20,
        "syncs_per_step": syncs,
    }


def epoch_section(args: argparse.Namespace, settings: list[Setting]) -> list[dict]:
    budget = "" if args.epoch_budget_s is None else f", at most about {args.epoch_budget_s:.0f} s timed per setting"
    print(
        f"\nOne training epoch through GAICDTrainer.train_epoch: batch 1, {args.views} views, "
        f"DataLoader workers: {args.epoch_workers}, in-memory {args.width}x{args.height} images; after two "
        f"{args.epoch_warmup}-image warm-up epochs{budget}.\n"
    )
    print("| backbone | setting | images timed | seconds | GAICD epoch, 1,036 images (s) | peak memory (MB) |")
    print("|---|---|---|---|---|---|")
    rows, sync_notes = [], []
    for backbone in args.backbones:
        for setting in settings:
            result = training_epoch(backbone, setting, args)
            if result["syncs_per_step"] is not None:
                sites = ", ".join(f"{line} x{count}" for line, count in result["syncs_per_step"].items())
                sync_notes.append(
                    f"- {backbone}, {setting.label}: {sum(result['syncs_per_step'].values())} ({sites or 'none'})"
                )
            extrapolated = " (extrapolated)" if result["images"] != GAICD_TRAIN_IMAGES else ""
            memory = "RSS " if setting.device.type == "cpu" else ""
            print(
                f"| {backbone} | {setting.label} | {result['images']} | {result['seconds']:.2f} | "
                f"{result['gaicd_epoch_seconds']:.1f}{extrapolated} | {memory}{result['peak_memory_mb']:.0f} |",
                flush=True,
            )
            rows.append(
                {
                    "backbone": backbone,
                    "setting": setting.label,
                    "dtype": str(setting.dtype).replace("torch.", ""),
                    **result,
                }
            )
    if sync_notes:
        print(
            "\nHost-device synchronisations in one training step (torch.cuda.set_sync_debug_mode), by the "
            "line that caused them:\n"
        )
        print("\n".join(sync_notes))
    return rows
