"""The training engine shared by the training scripts: one experiment's loop, logs and checkpoints.

A script builds the model and the datasets, gives :class:`Trainer` its loss (``loss_fn``) and
subclasses it for the evaluation; ``untils.experiment.launch`` starts or resumes the experiment.
Training is reproducible whatever the process layout: each image's augmentation and view sampling
are seeded from (seed, epoch, image), and each epoch's batch order from (seed, epoch).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import random
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from untils.atomic import write_text_atomic
from untils.batching import NamedCrops, NamedSubset, ScoredCrops, SizeBucketBatchSampler, collate_crops
from untils.checkpoint import config_to_dict, load_model_weights, save_atomic
from untils.figures import heat_map_figure, partition_figure
from untils.inference import move_batch, run_model
from untils.runtime import autocast, autocast_dtype, rng_state, seed_everything, set_rng_state

# loss_fn(model output, batch) -> (loss, its parts by name): 0-d tensors, read back only when logged
LossFunction = Callable[[Any, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def warmup_cosine(epoch: int, warmup_epochs: int, max_epoch: int) -> float:
    """The release's schedule factor: linear warm-up, then half a cosine down to 0 at max_epoch."""
    if warmup_epochs > 0 and epoch <= warmup_epochs:
        return min(1.0, (epoch + 1) / warmup_epochs)
    span = max(max_epoch - warmup_epochs, 1)
    return 0.5 * (math.cos((epoch - warmup_epochs) / span * math.pi) + 1)


def item_seed(seed: int, epoch: int, name: str) -> int:
    """A seed for one image in one epoch: the same whatever the process layout or worker count."""
    return (seed * 1_000_003 + epoch * 7_919 + zlib.crc32(name.encode())) % 2**63


def seeded_order(names: Sequence[str], seed: int, key: str) -> list[str]:
    """``names`` sorted, then shuffled by a generator seeded with ``seed`` and ``key`` (e.g. a user)."""
    order = sorted(names)
    random.Random(f"{seed}:{key}").shuffle(order)
    return order


def held_out_images(names: Sequence[str], val_fraction: float, seed: int) -> list[str]:
    """The images (sorted) held out for model selection: ``val_fraction`` of ``names``, at least one.

    Every recipe (GAICD, CPC, PIC pre-training and prior) uses this rule, so no stage selects on
    images another trained on.
    """
    order = seeded_order(names, seed, "validation")
    return sorted(order[: max(1, round(val_fraction * len(order)))])


def split_validation(full: ScoredCrops, cfg) -> tuple[ScoredCrops, list[str] | None]:
    """(training set, held-out names): :func:`held_out_images` when selecting on validation
    (``cfg.selection == 'val'``), else the whole set and None."""
    if cfg.selection == "test":
        return full, None
    val_names = held_out_images(full.names, cfg.val_fraction, cfg.seed)
    if len(val_names) >= len(full.names):
        raise ValueError(
            f"val_fraction={cfg.val_fraction} holds out {len(val_names)} of the {len(full.names)} "
            "training images and leaves none to train on: lower --val_fraction or use --selection test"
        )
    held = set(val_names)
    return NamedSubset(full, [i for i, name in enumerate(full.names) if name not in held]), val_names


def subset_of(dataset: NamedCrops, names: Sequence[str]) -> NamedSubset:
    """The images of ``dataset`` named in ``names``, in the dataset's order."""
    wanted = set(names)
    return NamedSubset(dataset, [i for i, name in enumerate(dataset.names) if name in wanted])


class EpochSeededItems(Dataset):
    """Seeds torch's RNG from (seed, epoch, index) before each item, so augmentation does not depend
    on the order images are loaded in, on DataLoader workers, or on how many processes train."""

    def __init__(self, dataset: NamedCrops, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, str(index)))
            return self.dataset[index]


def sample_views(batch: dict, views: int, seeds: Sequence[int] | None = None) -> dict:
    """Keep ``views`` random valid crops per image (all of them if it has fewer; ``views`` 0: every crop).

    ``seeds`` (one per image) make the choice independent of batching; without them the global
    torch RNG is used.
    """
    if views == 0:
        return batch
    valid = batch["crop_valid"]
    counts = valid.sum(dim=1).tolist()
    keep = max(min(views, int(n)) for n in counts)
    index = torch.zeros(valid.shape[0], keep, dtype=torch.long)
    new_valid = torch.zeros(valid.shape[0], keep, dtype=torch.bool)
    for image, count in enumerate(counts):
        generator = None if seeds is None else torch.Generator().manual_seed(seeds[image])
        chosen = valid[image].nonzero().flatten()[torch.randperm(int(count), generator=generator)[:keep]]
        index[image, : len(chosen)] = chosen
        new_valid[image, : len(chosen)] = True
    sampled = dict(batch)
    rows = torch.arange(valid.shape[0]).unsqueeze(1)
    for key in ("crop_box", "score"):
        if batch.get(key) is not None:
            sampled[key] = batch[key][rows, index]
    sampled["crop_valid"] = new_valid
    sampled["all_crops_valid"] = bool(new_valid.all())
    return sampled


class NullWriter:
    """Stands in for the TensorBoard writer on ranks other than 0, and where no writer is installed."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def summary_writer(log_dir: str) -> Any:
    """A TensorBoard writer (tensorboardX, else torch's own); a :class:`NullWriter` with a warning
    when neither is installed, so training runs on machines without them."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("warning: neither tensorboardX nor tensorboard is installed: no TensorBoard logs", flush=True)
            return NullWriter()
    return SummaryWriter(log_dir=log_dir)


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(header)
    writer.writerows(rows)
    return stream.getvalue()


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def resume_hint(checkpoint_dir: str) -> str:
    """How a stopped run goes on: the command (the script this process runs) that resumes from its
    last.pth, or that none was saved yet."""
    last = os.path.join(checkpoint_dir, "last.pth")
    if not os.path.isfile(last):
        return "no training checkpoint was saved yet: nothing to resume"
    return f"resume with: python {sys.argv[0]} --resume {last}"


def write_or_stop(path: str, write: Callable[[], None], checkpoint_dir: str) -> None:
    """``write()`` (an atomic write of ``path``); when it fails, as on a full disk (torch.save says so
    with a RuntimeError of its zip writer), training stops with one line naming the file. The atomic
    write leaves no partial file behind and ``path`` as it was."""
    try:
        write()
    except (OSError, RuntimeError) as error:
        reason = (
            error.strerror
            if isinstance(error, OSError) and error.strerror
            else (str(error).strip().splitlines() or [type(error).__name__])[0]
        )
        try:
            reason += f"; {shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.0f} MiB free there"
        except OSError:
            pass
        raise SystemExit(
            f"error: could not write {path} ({reason}); it was left as it was. "
            f"Make room, then {resume_hint(checkpoint_dir)}"
        ) from None


class Trainer:
    """Owns the model, optimiser, schedule, logs and checkpoints of one experiment.

    ``train_set`` is the training data (with ``names``, ``score_mean`` and ``resized_size_of``),
    ``val_names`` the images held out for model selection (None when selecting on the test split),
    ``loss_fn(output, batch) -> (loss, parts)`` the recipe's loss of :meth:`forward`'s output: the
    one way a script gives the engine its loss. The parts are 0-d tensors inside the loss; what the
    engine hands on (logs, ``results.csv``, :meth:`train_epoch`'s averages) are floats. Subclasses
    say how the model is evaluated: :meth:`evaluate` (the selection metrics after each epoch) and
    :meth:`evaluate_test` (each best checkpoint's final report when selecting on validation).
    """

    selection_metrics: tuple[str, ...] = ()
    lower_is_better: frozenset[str] = frozenset()

    def __init__(
        self,
        cfg,
        exp_path: str,
        device: torch.device,
        model: torch.nn.Module,
        train_set: NamedCrops,
        val_names: list[str] | None,
        loss_fn: LossFunction,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.exp_path = exp_path
        self.device = device
        self.rank, self.world, _ = init_distributed()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.checkpoint_dir = os.path.join(exp_path, "checkpoints")
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        if cfg.batch_size % (cfg.images_per_step * self.world):
            raise ValueError(
                f"batch_size={cfg.batch_size} must be a multiple of images_per_step x processes "
                f"= {cfg.images_per_step} x {self.world}"
            )
        self.core = model.to(device)
        if cfg.channels_last:
            self.core.to(memory_format=torch.channels_last)
        self.model: torch.nn.Module = self.core  # wrapped for DistributedDataParallel under torchrun
        self.loss_fn = loss_fn
        self.autocast_dtype = autocast_dtype(cfg.precision)
        # fp16 gradients can underflow; bf16 has fp32's exponent range and needs no scaling
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        if self.world > 1:
            # starts every process from rank 0's weights; every parameter takes part in every forward
            # (the partition-aware module runs on all images, also those without a person)
            self.model = DistributedDataParallel(
                self.core, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = torch.optim.Adam(self.core.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        if cfg.lr_scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda e: warmup_cosine(e, cfg.warmup_epochs, cfg.max_epoch)
            )
        elif cfg.lr_scheduler == "constant":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: 1.0)
        else:
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=cfg.lr_decay_epoch or [cfg.max_epoch + 1], gamma=cfg.lr_decay
            )
        self.train_set, self.val_names = train_set, val_names
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0
        self.epoch_sums: dict[str, Any] = {}  # loss parts summed over the epoch's batches so far
        # (step, image names, loss) of the batches whose loss was not yet checked to be finite
        self.unchecked: list[tuple[int, list[str], torch.Tensor]] = []
        self.check_every = 1 if device.type == "cpu" else cfg.display_freq
        self.saved_step = 0  # the step of the last last.pth
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, dict[str, Any]] = {}
        self.writer = summary_writer(os.path.join(exp_path, "logs")) if self.is_main else NullWriter()
        self.visual_dir = os.path.join(exp_path, "visualization")

    # ----- data -----------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches of dataset indices, a function of (seed, epoch) alone, so resuming is exact."""
        if self.cfg.images_per_step == 1:
            order = torch.randperm(
                len(self.train_set), generator=torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
            ).tolist()
            order += order[: (-len(order)) % self.world]  # every rank takes the same number of steps
            return [[i] for i in order[self.rank :: self.world]]
        sampler = SizeBucketBatchSampler(
            self.train_set,
            self.cfg.images_per_step,
            shuffle=True,
            drop_last=False,
            seed=self.cfg.seed,
            num_replicas=self.world,
            rank=self.rank,
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def loader(self, batches: list[list[int]]) -> DataLoader:
        return DataLoader(
            EpochSeededItems(self.train_set, self.cfg.seed, self.epoch),
            batch_sampler=batches,
            collate_fn=collate_crops,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    # ----- training -------------------------------------------------------------------------
    def forward(self, batch: dict) -> Any:
        """The model's output for a training batch: what ``loss_fn`` reads."""
        return run_model(self.model, batch)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """(loss, its parts as detached 0-d tensors, the model's output); called under autocast to
        ``cfg.precision``. The parts stay on the device: reading them back waits for it."""
        output = self.forward(batch)
        loss, parts = self.loss_fn(output, batch)
        return loss, {key: value.detach() for key, value in parts.items()}, output

    def set_training_mode(self) -> None:
        """Training mode, or with ``train_in_eval_mode`` eval mode throughout (GAIC's release: BatchNorm
        statistics stay as loaded, dropout is off)."""
        self.model.train(not self.cfg.train_in_eval_mode)

    def train_epoch(self) -> dict[str, float]:
        """One epoch (or the rest of a resumed one); returns the epoch's average loss parts and
        ``seconds``, as floats."""
        cfg = self.cfg
        self.set_training_mode()
        if self.batch_in_epoch == 0:
            seed_everything(cfg.seed * 7919 + self.epoch)
            self.epoch_sums = {}
        batches = self.epoch_batches(self.epoch)
        remaining = batches[self.batch_in_epoch :]
        accumulate = cfg.batch_size // (cfg.images_per_step * self.world)
        start = time.time()
        # closed on the way out too: an interrupted epoch clears its bar before the one-line message
        with tqdm(
            self.loader(remaining),
            total=len(remaining),
            disable=not self.progress,
            desc=f"epoch {self.epoch + 1}/{cfg.max_epoch}",
            leave=False,
        ) as bar:
            for batch in bar:
                steps_optimizer = (self.batch_in_epoch + 1) % accumulate == 0 or self.batch_in_epoch + 1 == len(batches)
                self.train_step(batch, accumulate, steps_optimizer)
                if self.step % self.check_every == 0:
                    bar.set_postfix(loss=f"{float(self.epoch_sums['total_loss']) / self.batch_in_epoch:.4f}")
                # only between optimiser steps: gradients accumulated so far are not part of a checkpoint
                if (
                    cfg.checkpoint_steps
                    and steps_optimizer
                    and self.step - self.saved_step >= cfg.checkpoint_steps
                    and self.batch_in_epoch < len(batches)
                ):
                    self.save_training_state()
        self.check_finite()
        averages = {key: float(value) / max(self.batch_in_epoch, 1) for key, value in self.epoch_sums.items()}
        averages["seconds"] = time.time() - start
        self.batch_in_epoch = 0
        return averages

    def train_step(self, batch: dict, accumulate: int, steps_optimizer: bool) -> None:
        """Forward, loss and backward of one batch (its gradient divided by ``accumulate``), then the
        optimiser step when ``steps_optimizer``; the loss parts are added to the epoch's sums."""
        cfg = self.cfg
        seeds = [item_seed(cfg.seed, self.epoch, name) for name in batch["name"]]
        batch = move_batch(sample_views(batch, cfg.view_per_image, seeds), self.device)
        if cfg.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        # gradients are averaged over processes once per optimiser step, not per accumulated batch
        model = self.model
        with (
            model.no_sync()
            if isinstance(model, DistributedDataParallel) and not steps_optimizer
            else contextlib.nullcontext()
        ):
            with autocast(self.device, self.autocast_dtype):
                loss, parts, outputs = self.compute_loss(batch)
            self.unchecked.append((self.step, batch["name"], loss.detach()))
            if len(self.unchecked) >= self.check_every:
                self.check_finite()
            self.scaler.scale(loss / accumulate).backward()
        self.batch_in_epoch += 1
        self.step += 1
        if steps_optimizer:
            self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        sums = self.epoch_sums
        for key, value in parts.items():  # device tensors: read back only when logged
            sums[key] = sums.get(key, 0.0) + value
        if self.step % cfg.display_freq == 0:
            for key, value in sums.items():
                self.writer.add_scalar(f"train/{key}", float(value) / self.batch_in_epoch, self.step)
            self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
        if self.step % cfg.visualize_freq == 0:
            self.log_panels(batch, outputs)

    def check_finite(self) -> None:
        """Stop on a NaN/inf loss (on any rank) among the batches not checked yet, naming their images;
        the last checkpoint stays as it was. On a GPU the check runs every ``display_freq`` steps and
        before every checkpoint, so training does not wait for the device after each step."""
        if not self.unchecked:
            return
        losses = torch.stack([loss.float() for _, _, loss in self.unchecked])
        finite = torch.isfinite(losses).all().to(torch.int32)
        if self.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            last = os.path.join(self.checkpoint_dir, "last.pth")
            kept = (
                f"the last good checkpoint is {last}"
                if os.path.isfile(last)
                else "no training checkpoint was saved yet"
            )
            bad = [
                (step, names, value)
                for (step, names, _), value in zip(self.unchecked, losses.tolist(), strict=True)
                if not math.isfinite(value)
            ]
            if not bad:
                raise TrainingDiverged(
                    f"the loss is not finite on another process, by step {self.step} of epoch "
                    f"{self.epoch} (rank {self.rank} is fine); {kept}"
                )
            step, names, value = bad[0]
            raise TrainingDiverged(
                f"loss is {value} at epoch {self.epoch}, step {step}, on image(s) "
                f"{', '.join(names)} (rank {self.rank}); {kept}"
            )
        self.unchecked.clear()

    def log_panels(self, batch: dict, output: Any) -> None:
        """Figures of the batch's first image: its predicted heat map and partition regions beside the
        targets, on the photo; to TensorBoard, and under visualization/ when ``visualize_heat_map`` /
        ``visualize_partition_feature``."""
        if not self.is_main:
            return
        figures = {}
        heat_map, partition_feat = getattr(output, "heat_map", None), getattr(output, "partition_feat", None)
        title = f"{batch['name'][0]}, step {self.step}"
        if heat_map is not None and self.cfg.use_content_preserve:
            figures["heat_map"] = (
                heat_map_figure(batch["image"][0], batch["heat_map"][0, 0], heat_map[0, 0], title),
                self.cfg.visualize_heat_map,
            )
        if (
            partition_feat is not None
            and self.cfg.use_partition_aware
            and partition_feat.shape[1] == 9
            and partition_feat[0].abs().sum() > 0
        ):
            human_box = batch["human_box"][0].reshape(-1).tolist()
            figures["partition"] = (
                partition_figure(batch["image"][0], human_box, batch["partition_mask"][0], partition_feat[0], title),
                self.cfg.visualize_partition_feature,
            )
        for name, (pixels, save) in figures.items():
            self.writer.add_image(f"train/{name}", pixels, self.step, dataformats="HWC")
            if save:
                os.makedirs(self.visual_dir, exist_ok=True)
                Image.fromarray(pixels).save(os.path.join(self.visual_dir, f"{self.step}_{name}.png"))

    # ----- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The selection metrics after an epoch (on the held-out images, or on the test split)."""
        raise NotImplementedError

    def evaluate_test(self) -> dict[str, float]:
        """The test metrics of the weights in ``self.core`` (the report of a validation-selected run)."""
        raise NotImplementedError

    def record(self, train_stats: dict[str, float], metrics: dict[str, float]) -> None:
        row = {
            "epoch": self.epoch,
            **{k: round(v, 4) for k, v in metrics.items()},
            "loss": round(train_stats.get("total_loss", float("nan")), 5),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        self.history.append(row)
        for name in self.selection_metrics:
            if name in metrics:
                self.writer.add_scalar(f"{self.cfg.selection}/{name}", metrics[name], self.epoch)
                previous = self.best.get(name, {}).get("value")
                improved = previous is None or (
                    metrics[name] < previous if name in self.lower_is_better else metrics[name] > previous
                )
                if improved:
                    self.best[name] = {"value": metrics[name], "epoch": self.epoch}
                    self.save_weights(os.path.join(self.checkpoint_dir, f"best-{name}.pth"), metrics)
        self.write_csv()

    def write_csv(self) -> None:
        """results.csv: every evaluated epoch (the selection metrics, then the others reported), then
        each selection metric's best row."""
        if not self.is_main:
            return
        selected = [m for m in self.selection_metrics if any(m in row for row in self.history)]
        reported = [
            key
            for key in dict.fromkeys(k for row in self.history for k in row)
            if key not in selected and key not in ("epoch", "loss", "lr")
        ]
        header = ["epoch"] + selected + reported + ["loss", "lr"]
        rows = [[row.get(column, "") for column in header] for row in self.history]
        for name in selected:
            best_epoch = self.best[name]["epoch"]
            row = next(r for r in self.history if r["epoch"] == best_epoch)
            rows.append([f"best {name} (epoch {best_epoch})"] + [row.get(c, "") for c in header[1:]])
        path = os.path.join(self.exp_path, "results.csv")
        write_or_stop(path, lambda: write_text_atomic(path, csv_text(header, rows)), self.checkpoint_dir)

    # ----- checkpoints ----------------------------------------------------------------------
    def save_weights(self, path: str, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        checkpoint = {
            "model": self.core.state_dict(),
            "config": config_to_dict(self.cfg),
            "model_type": self.cfg.model_type,
            "epoch": self.epoch,
            "metrics": metrics,
        }
        write_or_stop(path, lambda: save_atomic(checkpoint, path), self.checkpoint_dir)

    def save_training_state(self) -> str:
        self.check_finite()
        path = os.path.join(self.checkpoint_dir, "last.pth")
        self.saved_step = self.step
        if not self.is_main:
            return path
        state = {
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": config_to_dict(self.cfg),
            "model_type": self.cfg.model_type,
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_sums": {key: float(value) for key, value in self.epoch_sums.items()},
            "rng": rng_state(),
            "history": self.history,
            "best": self.best,
            "val_names": self.val_names,
        }
        write_or_stop(path, lambda: save_atomic(state, path), self.checkpoint_dir)
        return path

    def restore(self, checkpoint: dict) -> None:
        load_model_weights(self.core, checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.batch_in_epoch = checkpoint["batch_in_epoch"]
        self.epoch_sums = dict(checkpoint.get("epoch_sums", {}))
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
                self.set_training_mode()
                self.record(stats, metrics)
                shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
                if self.is_main:
                    print(
                        f"epoch {self.epoch + 1}/{cfg.max_epoch}: loss={stats.get('total_loss', float('nan')):.4f} "
                        f"({stats['seconds']:.1f}s) | {cfg.selection}: {shown}",
                        flush=True,
                    )
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
        """Evaluate each best-on-validation checkpoint once on the test data: test_results.csv."""
        rows = []
        for name in self.selection_metrics:
            if name not in self.best:  # the same on every rank, unlike the files rank 0 writes
                continue
            load_model_weights(self.core, os.path.join(self.checkpoint_dir, f"best-{name}.pth"))
            rows.append(
                {
                    "selected_by": f"val {name}",
                    "epoch": self.best[name]["epoch"],
                    **{k: round(v, 4) for k, v in self.evaluate_test().items()},
                }
            )
        if not rows or not self.is_main:
            return
        header = list(dict.fromkeys(k for row in rows for k in row))
        path = os.path.join(self.exp_path, "test_results.csv")
        text = csv_text(header, [[row.get(k, "") for k in header] for row in rows])
        write_or_stop(path, lambda: write_text_atomic(path, text), self.checkpoint_dir)
        print("test data, each metric's best-on-validation checkpoint:")
        for row in rows:
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
