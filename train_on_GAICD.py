"""Train the human-centric cropping model (or an ablation of it) on GAICD.

  python train_on_GAICD.py --demo                         # the whole pipeline in ~3 CPU minutes
  python train_on_GAICD.py --data-root /data/crop         # the paper's recipe (config_GAICD.py)
  python train_on_GAICD.py --preset PA-2part --max_epoch 40
  python train_on_GAICD.py --resume experiments/GAICD_PA_CP/checkpoints/last.pth

Each step scores `view_per_image` random candidate crops of an image; the loss is the score
losses of `loss_type` plus `content_loss_weight` x L1(predicted, pseudo heat map). Adam, cosine
schedule after `warmup_epochs` linear warm-up epochs, gradients accumulated to `batch_size`
images. After each epoch: SRCC/Acc5/Acc10 on the human-centric and the full evaluation set, a
CSV of all epochs with the best row per metric, and best-<metric>.pth checkpoints.
`--selection test` picks the best epochs on the test split, as the release (and the paper) did;
the default `val` picks them on images held out from train and reports the test split once.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import zlib

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tensorboardX import SummaryWriter
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

import config_GAICD
from cropping_dataset import GAICDataset, SizeBucketBatchSampler, collate_crops
from cropping_model import build_crop_model, crop_score_loss
from test import evaluate_on_GAICD, model_outputs, move_batch
from untils.checkpoint import config_to_dict, load_model_weights, read_checkpoint, save_atomic
from untils.config import add_config_arguments
from untils.runtime import autocast, autocast_dtype, resolve_device, rng_state, seed_everything, set_rng_state

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("the paper's model: partition-aware (9 parts, with person) + content-preserving (gcn)", {}),
    "GAIC": ("GAIC baseline: multi-scale features, RoI+RoD, three-layer conv head",
             {"model_type": "GAIC", "use_partition_aware": False, "use_content_preserve": False}),
    "baseline": ("our model without partition-aware and content-preserving features",
                 {"use_partition_aware": False, "use_content_preserve": False}),
    "PA": ("+ partition-aware only", {"use_content_preserve": False}),
    "CP": ("+ content-preserving only", {"use_partition_aware": False}),
    "PA-0part": ("partition type 0: the nine features averaged", {"partition_aware_type": 0}),
    "PA-1part": ("partition type 1: the person's region only", {"partition_aware_type": 1}),
    "PA-2part": ("partition type 2: person vs. background", {"partition_aware_type": 2}),
    "PA-9part": ("partition type 9 (default)", {"partition_aware_type": 9}),
    "PA-nohuman": ("partition-aware without the person's RoI feature", {"concat_with_human": False}),
    "CP-conv": ("content-preserving with 'conv' instead of graph reasoning", {"content_preserve_type": "conv"}),
    "CP-gcn": ("content-preserving with graph reasoning (default)", {"content_preserve_type": "gcn"}),
    "CP-only": ("score crops from the content-preserving feature alone", {"only_content_preserve": True}),
    "woRoD": ("without the RoD (discarded content) feature", {"use_rod_feature": False}),
    "loss-L1": ("score loss: smooth-L1 only", {"loss_type": ["L1Loss"]}),
    "loss-WL1-Rank": ("score loss: score-weighted smooth-L1 + rank", {"loss_type": ["WeightedL1Loss", "RankLoss"]}),
    "loss-L1-LVR": ("score loss: smooth-L1 + listwise view ranking", {"loss_type": ["L1Loss", "LVRLoss"]}),
    "loss-LVR": ("score loss: listwise view ranking only", {"loss_type": ["LVRLoss"]}),
}
METRICS = ("human_srcc", "human_acc5", "human_acc10", "srcc", "acc5", "acc10")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class NamedSubset(Subset):
    """A subset of a crop dataset that still answers the questions the samplers ask."""

    @property
    def names(self) -> list[str]:
        return [self.dataset.names[i] for i in self.indices]

    @property
    def score_mean(self) -> float:
        return self.dataset.score_mean

    def resized_size_of(self, index: int):
        return self.dataset.resized_size_of(self.indices[index])


def warmup_cosine(epoch: int, warmup_epochs: int, max_epoch: int) -> float:
    """The release's schedule factor: linear warm-up, then half a cosine down to 0 at max_epoch."""
    if warmup_epochs > 0 and epoch <= warmup_epochs:
        return min(1.0, (epoch + 1) / warmup_epochs)
    span = max(max_epoch - warmup_epochs, 1)
    return 0.5 * (math.cos((epoch - warmup_epochs) / span * math.pi) + 1)


def item_seed(seed: int, epoch: int, name: str) -> int:
    """A seed for one image in one epoch: the same whatever the process layout or worker count."""
    return (seed * 1_000_003 + epoch * 7_919 + zlib.crc32(name.encode())) % 2**63


class EpochSeededItems(Dataset):
    """Seeds torch's RNG from (seed, epoch, index) before each item, so augmentation does not depend
    on the order images are loaded in, on DataLoader workers, or on how many processes train."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, str(index)))
            return self.dataset[index]


def sample_views(batch: dict, views: int, seeds: Optional[Sequence[int]] = None) -> dict:
    """Keep ``views`` random valid crops per image (all of them if it has fewer).

    ``seeds`` (one per image) make the choice independent of batching; without them the global
    torch RNG is used.
    """
    valid = batch["crop_valid"]
    counts = valid.sum(dim=1).tolist()
    keep = max(min(views, int(n)) for n in counts)
    index = torch.zeros(valid.shape[0], keep, dtype=torch.long)
    new_valid = torch.zeros(valid.shape[0], keep, dtype=torch.bool)
    for image, count in enumerate(counts):
        generator = None if seeds is None else torch.Generator().manual_seed(seeds[image])
        chosen = valid[image].nonzero().flatten()[torch.randperm(int(count), generator=generator)[:keep]]
        index[image, :len(chosen)] = chosen
        new_valid[image, :len(chosen)] = True
    sampled = dict(batch)
    rows = torch.arange(valid.shape[0]).unsqueeze(1)
    for key in ("crop_box", "crop_mask", "score"):
        if batch.get(key) is not None:
            sampled[key] = batch[key][rows, index]
    sampled["crop_valid"] = new_valid
    return sampled


class NullWriter:
    """Stands in for the TensorBoard writer on ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


class Trainer:
    """Owns the model, optimiser, schedule, data, logs and checkpoints of one experiment.

    Subclasses (train_on_CPC.py) change the data and the evaluation: ``build_training_set``,
    ``evaluate``, ``report_test`` and the metrics that select checkpoints.
    """

    selection_metrics: tuple[str, ...] = METRICS
    lower_is_better: frozenset[str] = frozenset()

    def __init__(self, cfg, exp_path: str, device: torch.device, progress: bool = True) -> None:
        self.cfg = cfg
        self.exp_path = exp_path
        self.device = device
        self.rank, self.world, _ = init_distributed()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.checkpoint_dir = os.path.join(exp_path, "checkpoints")
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        if cfg.batch_size % (cfg.images_per_step * self.world):
            raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of images_per_step x processes "
                             f"= {cfg.images_per_step} x {self.world}")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)
        self.core = build_crop_model(cfg, cfg.model_type).to(device)
        if cfg.channels_last:
            self.core.to(memory_format=torch.channels_last)
        self.model = self.core
        self.autocast_dtype = autocast_dtype(cfg.precision)
        # fp16 gradients can underflow; bf16 has fp32's exponent range and needs no scaling
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        if self.world > 1:
            # starts every process from rank 0's weights; every parameter takes part in every forward
            # (the partition-aware module runs on all images, also those without a person)
            self.model = DistributedDataParallel(self.core, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.core.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.lr_scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda e: warmup_cosine(e, cfg.warmup_epochs, cfg.max_epoch))
        else:
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=cfg.lr_decay_epoch or [cfg.max_epoch + 1], gamma=cfg.lr_decay)
        self.train_set, self.val_names = self.build_training_set()
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0
        self.saved_step = 0  # the step of the last last.pth
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, dict[str, Any]] = {}
        self.writer = SummaryWriter(log_dir=os.path.join(exp_path, "logs")) if self.is_main else NullWriter()
        self.visual_dir = os.path.join(exp_path, "visualization")

    # ----- data -----------------------------------------------------------------------------
    def build_training_set(self):
        full = GAICDataset(self.cfg, split="train", only_human_images=self.cfg.only_human,
                           keep_aspect_ratio=self.cfg.keep_aspect_ratio)
        return self.split_validation(full)

    def split_validation(self, full):
        """(training set, held-out names): ``val_fraction`` of the images when selecting on validation."""
        if self.cfg.selection == "test":
            return full, None
        names = list(full.names)
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(self.cfg.seed)).tolist()
        held_out = max(1, round(self.cfg.val_fraction * len(names)))
        if held_out >= len(names):
            raise ValueError(f"val_fraction={self.cfg.val_fraction} holds out {held_out} of the {len(names)} training "
                             "images and leaves none to train on: lower --val_fraction or use --selection test")
        val_names = sorted(names[i] for i in order[:held_out])
        return NamedSubset(full, sorted(order[held_out:])), val_names

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches of dataset indices, a function of (seed, epoch) alone, so resuming is exact."""
        if self.cfg.images_per_step == 1:
            order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(
                self.cfg.seed * 100003 + epoch)).tolist()
            order += order[:(-len(order)) % self.world]  # every rank takes the same number of steps
            return [[i] for i in order[self.rank::self.world]]
        sampler = SizeBucketBatchSampler(self.train_set, self.cfg.images_per_step, shuffle=True, drop_last=False,
                                         seed=self.cfg.seed, num_replicas=self.world, rank=self.rank)
        sampler.set_epoch(epoch)
        return list(sampler)

    def loader(self, batches: Sequence[Sequence[int]]) -> DataLoader:
        items = EpochSeededItems(self.train_set, self.cfg.seed)
        items.epoch = self.epoch
        return DataLoader(items, batch_sampler=batches, collate_fn=collate_crops,
                          num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    # ----- training -------------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float], tuple]:
        """(loss, its parts as floats, the model's outputs); runs under autocast to ``cfg.precision``,
        the losses themselves in fp32."""
        outputs = model_outputs(self.model, batch)
        _, heat_map, score = outputs
        score_loss = crop_score_loss(score.float(), batch["score"], self.cfg.loss_type, batch["crop_valid"],
                                     score_mean=self.train_set.score_mean,
                                     rank_loss_weighting=self.cfg.rank_loss_weighting)
        loss = score_loss
        parts = {"score_loss": score_loss.item()}
        if heat_map is not None and self.cfg.use_content_preserve:
            has_target = batch.get("has_heat_map")
            target = batch["heat_map"]
            if has_target is not None and not bool(has_target.all()):
                keep = has_target.to(heat_map.device)
                heat_map, target = heat_map[keep], target[keep]
            if heat_map.numel():
                content_loss = F.l1_loss(heat_map.reshape(-1).float(), target.reshape(-1).float())
                loss = loss + self.cfg.content_loss_weight * content_loss
                parts["content_loss"] = content_loss.item()
        parts["total_loss"] = loss.item()
        return loss, parts, outputs

    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        if self.batch_in_epoch == 0:
            seed_everything(cfg.seed * 7919 + self.epoch)
        batches = self.epoch_batches(self.epoch)
        remaining = batches[self.batch_in_epoch:]
        accumulate = cfg.batch_size // (cfg.images_per_step * self.world)
        sums: dict[str, float] = {}
        seen = 0
        bar = tqdm(self.loader(remaining), total=len(remaining), disable=not self.progress,
                   desc=f"epoch {self.epoch + 1}/{cfg.max_epoch}", leave=False)
        start = time.time()
        for batch in bar:
            seeds = [item_seed(cfg.seed, self.epoch, name) for name in batch["name"]]
            batch = move_batch(sample_views(batch, cfg.view_per_image, seeds), self.device)
            if cfg.channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            steps_optimizer = (self.batch_in_epoch + 1) % accumulate == 0 or self.batch_in_epoch + 1 == len(batches)
            # gradients are averaged over processes once per optimiser step, not per accumulated batch
            synchronise = steps_optimizer or self.world == 1
            with (contextlib.nullcontext() if synchronise else self.model.no_sync()):
                with autocast(self.device, self.autocast_dtype):
                    loss, parts, outputs = self.compute_loss(batch)
                self.check_finite(loss, batch)
                self.scaler.scale(loss / accumulate).backward()
            self.batch_in_epoch += 1
            self.step += 1
            seen += 1
            if steps_optimizer:
                self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{sums['total_loss'] / seen:.4f}")
            if self.step % cfg.display_freq == 0:
                for key, value in sums.items():
                    self.writer.add_scalar(f"train/{key}", value / seen, self.step)
                self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
            if self.step % cfg.visualize_freq == 0:
                self.log_panels(batch, outputs)
            # only between optimiser steps: gradients accumulated so far are not part of a checkpoint
            if (cfg.checkpoint_steps and steps_optimizer and self.step - self.saved_step >= cfg.checkpoint_steps
                    and self.batch_in_epoch < len(batches)):
                self.save_training_state()
        elapsed = time.time() - start
        averages = {key: value / max(seen, 1) for key, value in sums.items()}
        averages["seconds"] = elapsed
        self.batch_in_epoch = 0
        return averages

    def check_finite(self, loss: torch.Tensor, batch: dict) -> None:
        """Stop on a NaN/inf loss (on any rank), naming the images; the last checkpoint stays as it was."""
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if self.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            raise TrainingDiverged(
                f"loss is {loss.item()} at epoch {self.epoch}, step {self.step}, on image(s) "
                f"{', '.join(batch['name'])} (rank {self.rank}); the last good checkpoint is "
                f"{os.path.join(self.checkpoint_dir, 'last.pth')}")

    def log_panels(self, batch: dict, outputs: tuple) -> None:
        """Predicted vs. target heat map and partition maps of the batch's first image, to TensorBoard;
        also saved under visualization/ when ``visualize_heat_map`` / ``visualize_partition_feature``."""
        if not self.is_main:
            return
        partition_feat, heat_map, _ = outputs
        panels = {}
        if heat_map is not None and self.cfg.use_content_preserve:
            target = batch["heat_map"][0, 0].float().cpu()
            predicted = heat_map[0, 0].detach().float().cpu()
            panels["heat_map"] = (torch.cat([target, torch.ones(64, 2), predicted], dim=1),
                                  self.cfg.visualize_heat_map)
        if partition_feat is not None and self.cfg.use_partition_aware and partition_feat[0].abs().sum() > 0:
            predicted = torch.softmax(partition_feat[0].detach().float().cpu(), dim=0)
            target = batch["partition_mask"][0].float().cpu()
            if predicted.shape[0] == 9:
                target_grid = _grid3x3(target)
                panels["partition"] = (torch.cat([target_grid, torch.ones(target_grid.shape[0], 2),
                                                  _grid3x3(predicted)], dim=1), self.cfg.visualize_partition_feature)
        for title, (panel, save) in panels.items():
            # left: target, right: prediction
            self.writer.add_image(f"train/{title}", panel.clamp(0, 1).unsqueeze(0), self.step)
            if save:
                os.makedirs(self.visual_dir, exist_ok=True)
                image = (panel.clamp(0, 1).numpy() * 255).astype(np.uint8)
                Image.fromarray(image).resize((image.shape[1] * 4, image.shape[0] * 4), Image.NEAREST).save(
                    os.path.join(self.visual_dir, f"{self.step}_{title}.png"))

    # ----- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Metrics of the selection split: human-centric subset and all images."""
        split, names = ("test", None) if self.cfg.selection == "test" else ("train", self.val_names)
        return self.evaluate_split(split, names)

    def evaluate_split(self, split: str, names: Optional[list[str]]) -> dict[str, float]:
        results: dict[str, float] = {}
        for prefix, only_human in (("human_", True), ("", False)):
            try:
                metrics = evaluate_on_GAICD(self.core, self.cfg, only_human=only_human, split=split, names=names,
                                            images_per_batch=self.cfg.images_per_step,
                                            num_workers=self.cfg.num_workers, progress=self.progress,
                                            autocast_dtype=self.autocast_dtype, channels_last=self.cfg.channels_last)
            except ValueError as error:
                if "no images to evaluate" not in str(error):
                    raise
                continue  # e.g. a small validation split without a person
            for key in ("srcc", "acc5", "acc10", "pcc"):
                results[prefix + key] = metrics[key]
        self.model.train()
        return results

    def record(self, train_stats: dict[str, float], metrics: dict[str, float]) -> None:
        row = {"epoch": self.epoch, **{k: round(v, 4) for k, v in metrics.items()},
               "loss": round(train_stats.get("total_loss", float("nan")), 5),
               "lr": self.optimizer.param_groups[0]["lr"]}
        self.history.append(row)
        for name in self.selection_metrics:
            if name in metrics:
                self.writer.add_scalar(f"{self.cfg.selection}/{name}", metrics[name], self.epoch)
                previous = self.best.get(name, {}).get("value")
                improved = previous is None or (metrics[name] < previous if name in self.lower_is_better
                                                else metrics[name] > previous)
                if improved:
                    self.best[name] = {"value": metrics[name], "epoch": self.epoch}
                    self.save_weights(os.path.join(self.checkpoint_dir, f"best-{name}.pth"), metrics)
        self.write_csv()

    def write_csv(self) -> None:
        if not self.is_main:
            return
        header = (["epoch"] + [m for m in self.selection_metrics if any(m in row for row in self.history)]
                  + ["loss", "lr"])
        path = os.path.join(self.exp_path, "results.csv")
        with open(path + ".tmp", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            for row in self.history:
                writer.writerow([row.get(column, "") for column in header])
            for name in header[1:-2]:
                best_epoch = self.best[name]["epoch"]
                row = next(r for r in self.history if r["epoch"] == best_epoch)
                writer.writerow([f"best {name} (epoch {best_epoch})"] + [row.get(c, "") for c in header[1:]])
        os.replace(path + ".tmp", path)

    # ----- checkpoints ----------------------------------------------------------------------
    def save_weights(self, path: str, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        save_atomic({"model": self.core.state_dict(), "config": config_to_dict(self.cfg),
                     "model_type": self.cfg.model_type, "epoch": self.epoch, "metrics": metrics}, path)

    def save_training_state(self) -> str:
        path = os.path.join(self.checkpoint_dir, "last.pth")
        self.saved_step = self.step
        if not self.is_main:
            return path
        save_atomic({"model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                     "config": config_to_dict(self.cfg),
                     "model_type": self.cfg.model_type, "epoch": self.epoch, "step": self.step,
                     "batch_in_epoch": self.batch_in_epoch, "rng": rng_state(), "history": self.history,
                     "best": self.best, "val_names": self.val_names}, path)
        return path

    def restore(self, checkpoint: dict) -> None:
        load_model_weights(self.core, checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.batch_in_epoch = checkpoint["batch_in_epoch"]
        self.saved_step = self.step
        self.history, self.best = checkpoint["history"], checkpoint["best"]
        self.val_names = checkpoint.get("val_names", self.val_names)
        set_rng_state(checkpoint["rng"])

    # ----- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        while self.epoch < cfg.max_epoch:
            stats = self.train_epoch()
            if self.epoch % cfg.eval_freq == 0 or self.epoch == cfg.max_epoch - 1:
                metrics = self.evaluate()
                self.record(stats, metrics)
                shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
                if self.is_main:
                    print(f"epoch {self.epoch + 1}/{cfg.max_epoch}: loss={stats.get('total_loss', float('nan')):.4f} "
                          f"({stats['seconds']:.1f}s) | {cfg.selection}: {shown}", flush=True)
            if cfg.save_freq and (self.epoch + 1) % cfg.save_freq == 0:
                self.save_weights(os.path.join(self.checkpoint_dir, f"epoch-{self.epoch + 1}.pth"), {})
            self.scheduler.step()
            self.epoch += 1
            self.save_training_state()
        if cfg.selection == "val":
            if self.world > 1:
                dist.barrier()  # rank 0 has written the best checkpoints every rank now loads
            self.report_test()
        self.writer.close()

    def report_test(self) -> None:
        """Evaluate each best-on-validation checkpoint once on the test split."""
        rows = []
        for name in self.selection_metrics:
            if name not in self.best:  # the same on every rank, unlike the files rank 0 writes
                continue
            load_model_weights(self.core, os.path.join(self.checkpoint_dir, f"best-{name}.pth"))
            rows.append({"selected_by": f"val {name}", "epoch": self.best[name]["epoch"],
                         **{k: round(v, 4) for k, v in self.evaluate_split("test", None).items()}})
        if not rows or not self.is_main:
            return
        header = list(dict.fromkeys(k for row in rows for k in row))
        with open(os.path.join(self.exp_path, "test_results.csv"), "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        print("test split, each metric's best-on-validation checkpoint:")
        for row in rows:
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


def _grid3x3(maps: torch.Tensor) -> torch.Tensor:
    """Nine (H, W) maps laid out in a 3x3 grid with 1-pixel white lines."""
    height, width = maps.shape[-2:]
    rows = []
    for r in range(3):
        cells = []
        for c in range(3):
            cells += [maps[r * 3 + c], torch.ones(height, 1)]
        rows += [torch.cat(cells[:-1], dim=1), torch.ones(1, 3 * width + 2)]
    return torch.cat(rows[:-1], dim=0)


def prepare_demo(demo_dir: str, given: dict[str, Any]) -> dict[str, Any]:
    """Build the generated human-centric dataset and its pseudo heat maps; return the demo's options."""
    from generate_pseudo_heatmap import generate_heatmaps
    from untils.demo_data import build_demo_dataset

    data_root = os.path.join(demo_dir, "data")
    if not os.path.exists(os.path.join(data_root, "GAICD", "image_crop.json")):
        print(f"building the demo dataset in {data_root} ...", flush=True)
        build_demo_dataset(data_root, num_train=32, num_test=12)
    options = {"data_root": data_root, "backbone": "mobilenetv2", "pretrained": False, "device": "cpu",
               "max_epoch": 3, "warmup_epochs": 1, "num_workers": 0, "lr": 3e-4, "view_per_image": 16,
               "image_size": (192, 192),
               "exp_root": os.path.join(demo_dir, "experiments"), "display_freq": 10, "visualize_freq": 25,
               "selection": "test", "exp_name": "demo", "visualize_heat_map": True,
               "visualize_partition_feature": True}
    options.update(given)
    cfg = config_GAICD.Config(**options)
    print("generating pseudo heat maps ...", flush=True)
    generate_heatmaps("GAICD", cfg, cfg.heat_map_dir, workers=1)
    return options


def build_parser(description: str, config_cls: type, with_demo: bool = False) -> argparse.ArgumentParser:
    """The training scripts' options: presets, resume, and every field of ``config_cls``."""
    preset_help = "\n".join(f"  {name:14s} {text}" for name, (text, _) in PRESETS.items())
    parser = argparse.ArgumentParser(
        usage="%(prog)s [--demo | --preset NAME | --resume PATH] [config options]",
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets (--preset NAME; explicit options win over the preset):\n" + preset_help)
    if with_demo:
        parser.add_argument("--demo", action="store_true",
                            help="generate a small human-centric dataset from photos shipped in pip packages and "
                                 "train on it on the CPU (exercises the pipeline; not a result of the paper)")
        parser.add_argument("--demo-dir", default="demo_runs", help="where --demo writes its data and experiment")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="an ablation row of the paper (see below)")
    parser.add_argument("--resume", metavar="PATH", help="continue from a last.pth training checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, config_cls)
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key[len("cfg__"):]: value for key, value in vars(args).items() if key.startswith("cfg__")}


def launch(trainer_cls: type, config_cls: type, args: argparse.Namespace,
           prepare: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None) -> Trainer:
    """Start (or ``--resume``) an experiment and train it; a diverged loss ends with a clear message."""
    given = config_overrides(args)
    rank, world, local_rank = init_distributed()
    checkpoint = None
    if args.resume:
        checkpoint = read_checkpoint(args.resume)
        if "optimizer" not in checkpoint:
            raise SystemExit(f"{args.resume} holds model weights only; --resume needs a last.pth training checkpoint")
        cfg = config_cls(**{**checkpoint["config"], **given})
        exp_path = os.path.dirname(os.path.dirname(os.path.abspath(args.resume)))
    else:
        options = dict(PRESETS[args.preset][1]) if args.preset else {}
        options.update(given)
        if prepare is not None:
            options = prepare(options)
        cfg = config_cls(**options)
        exp_path = cfg.create_experiment_dir() if rank == 0 else None
        if world > 1:
            shared = [exp_path]
            dist.broadcast_object_list(shared, src=0)
            exp_path = shared[0]
    device = resolve_device(cfg.device, cfg.gpu_id)
    if world > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    if rank == 0:
        with open(os.path.join(exp_path, "config.json"), "w") as stream:
            json.dump(config_to_dict(cfg), stream, indent=2)
        print(f"experiment {exp_path} on {device}" + (f" x {world} processes" if world > 1 else ""), flush=True)
    trainer = trainer_cls(cfg, exp_path, device, progress=not args.no_progress)
    if checkpoint is not None:
        trainer.restore(checkpoint)
    try:
        trainer.run()
    except BaseException as error:
        if world > 1 and dist.is_initialized():
            shut_down_distributed(trainer, wait_for_other_ranks=False)  # another may be inside a collective
        if isinstance(error, TrainingDiverged):
            trainer.writer.close()
            raise SystemExit(f"training stopped: {error}")
        raise
    if world > 1:
        shut_down_distributed(trainer)
    return trainer


def shut_down_distributed(trainer: Trainer, wait_for_other_ranks: bool = True, settle_s: float = 0.2) -> None:
    """Tear the process group down (once every rank is done with it, unless told not to wait).

    gloo's worker threads free each finished collective's tensors after the caller has moved on,
    and need the GIL for it. The DistributedDataParallel wrapper's destructor, when it drops the
    last reference to the group, joins those threads while holding the GIL: if one of them was
    still freeing tensors, the process hung for good (3 of about 50 two-process runs). Sleeping
    (without the GIL) lets them finish before the wrapper and the group are freed here.
    """
    if wait_for_other_ranks:
        dist.barrier()
    time.sleep(settle_s)
    dist.destroy_process_group()
    trainer.model = trainer.core


def main(argv: Optional[Sequence[str]] = None) -> Trainer:
    args = build_parser(__doc__, config_GAICD.Config, with_demo=True).parse_args(argv)
    prepare = (lambda options: prepare_demo(args.demo_dir, options)) if args.demo else None
    return launch(Trainer, config_GAICD.Config, args, prepare)


if __name__ == "__main__":
    main()
