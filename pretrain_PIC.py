"""Pre-train personalized cropping (PIC): one backbone, an objective and a subjective branch.

  python pretrain_PIC.py --data-root DATA                         # objective: the users' average scores
  python pretrain_PIC.py --data-root DATA --objective_set GAICD   # objective: GAICD's scores (or CPC)
  python pretrain_PIC.py --resume experiments/PIC_mobilenetv2/checkpoints/last.pth

Each step scores `view_per_image` random candidate crops of each image with the objective branch
(GAIC's head on RoI+RoD features; `loss_type` losses against the objective scores) and classifies
which training user chose each of the `best_crops` best crops of the step's PIC images with the
subjective branch (cross-entropy over all training users, weighted by `subjective_loss_weight`).
With `--objective_set GAICD`/`CPC` the subjective branch gets its own batch of PIC images.
Same engine as train_on_GAICD.py: Adam, warm-up + cosine, gradients accumulated to `batch_size`,
atomic checkpoints, `--resume`. After each epoch: SRCC/Acc5/Acc10 of the objective branch and the
user-classification accuracy on held-out images (`val_fraction`); best-<metric>.pth keeps the best
epoch of each. prior_PIC.py continues from best-srcc.pth. Test users are never seen here.
"""
from __future__ import annotations

import argparse
from functools import cached_property
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import config_PIC
from cropping_dataset import CPCDataset, GAICDataset, SizeBucketBatchSampler, collate_crops
from cropping_model import crop_score_loss
from test import bucketed_loader, evaluate_scored, move_batch
from train_on_GAICD import NamedSubset, Trainer, launch
from untils.boxes import flip_boxes_horizontal, rescale_boxes
from untils.config import add_config_arguments
from untils.pic_data import PICImageDataset, held_out_images, load_pic_data


class PICPretrainer(Trainer):
    """Trains the objective and subjective branches of a PIC model together."""

    selection_metrics = ("srcc", "acc5", "acc10", "user_acc")

    def __init__(self, cfg: config_PIC.Config, exp_path: str, device: torch.device, progress: bool = True) -> None:
        self.pic = load_pic_data(cfg)
        users = self.pic.train_users
        if cfg.num_users not in (0, len(users)):
            raise ValueError(f"num_users={cfg.num_users}, but {cfg.PIC_users} lists {len(users)} training users")
        cfg.num_users = len(users)
        self.best_by_image = self._best_crops_by_image(cfg.best_crops)
        super().__init__(cfg, exp_path, device, progress)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise SystemExit("pretrain_PIC.py trains in one process: the subjective branch's passes are not "
                             "wrapped for DistributedDataParallel; run it without torchrun")
        self.subjective_batches = None if cfg.objective_set == "PIC" else self._cycle_subjective_batches()

    # ----- data -----------------------------------------------------------------------------
    def _best_crops_by_image(self, count: int) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        """For each PIC image: the classifier labels (M,) and boxes (M, 4, original pixels) of the
        training users' best crops."""
        labels: dict[str, list[int]] = {}
        boxes: dict[str, list[np.ndarray]] = {}
        for label, user in enumerate(self.pic.train_users):
            for name in self.pic.images_of(user):
                best = self.pic.best_crops(user, name, count)
                labels.setdefault(name, []).extend([label] * len(best))
                boxes.setdefault(name, []).append(best)
        return {name: (torch.tensor(labels[name]), np.concatenate(boxes[name])) for name in labels}

    def pic_images(self, augment: bool) -> PICImageDataset:
        return PICImageDataset(self.cfg, self.pic, self.pic.train_users, augment=augment)

    def objective_dataset(self, augment: bool):
        cfg = self.cfg
        if cfg.objective_set == "PIC":
            return self.pic_images(augment)
        if cfg.objective_set == "GAICD":
            return GAICDataset(cfg, "train", cfg.only_human, cfg.keep_aspect_ratio, augment,
                               with_crop_masks=False, require_heat_maps=False)
        return CPCDataset(cfg, cfg.only_human, cfg.keep_aspect_ratio, augment, with_crop_masks=False,
                          require_heat_maps=False)

    def split_validation(self, full):
        """Hold out images by ``held_out_images``, the rule prior_PIC.py uses too."""
        val_names = held_out_images(full.names, self.cfg.val_fraction, self.cfg.seed)
        held = set(val_names)
        return NamedSubset(full, [i for i, name in enumerate(full.names) if name not in held]), val_names

    def build_training_set(self):
        self.subjective_train, self.subjective_val_names = self.split_validation(
            self.pic_images(self.cfg.data_augmentation))
        if self.cfg.objective_set == "PIC":
            return self.subjective_train, self.subjective_val_names
        return self.split_validation(self.objective_dataset(self.cfg.data_augmentation))

    def _cycle_subjective_batches(self) -> Iterator[dict]:
        """Endless shuffled batches of training PIC images (objective_set GAICD/CPC)."""
        epoch = 0
        while True:
            sampler = SizeBucketBatchSampler(self.subjective_train, self.cfg.images_per_step, shuffle=True,
                                             seed=self.cfg.seed + 1)
            sampler.set_epoch(epoch)
            yield from DataLoader(self.subjective_train, batch_sampler=sampler, collate_fn=collate_crops,
                                  num_workers=self.cfg.num_workers)
            epoch += 1

    def best_crop_rois(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rois (M, 5), person boxes (M, 4), labels (M,))`` of the users' best crops of a batch of
        PIC images, in the batch's resized (and flipped) pixels."""
        resized_h, resized_w = batch["image"].shape[-2:]
        rois, humans, labels = [], [], []
        for image, name in enumerate(batch["name"]):
            image_labels, boxes = self.best_by_image[name]
            width, height = int(batch["width"][image]), int(batch["height"][image])
            boxes = rescale_boxes(torch.from_numpy(boxes), resized_w / width, resized_h / height)
            if bool(batch["flipped"][image]):
                boxes = flip_boxes_horizontal(boxes, resized_w)
            rois.append(torch.cat([boxes.new_full((len(boxes), 1), image), boxes], dim=1))
            humans.append(batch["human_box"][image].reshape(1, 4).cpu().expand(len(boxes), 4))
            labels.append(image_labels)
        device = batch["image"].device
        return torch.cat(rois).to(device), torch.cat(humans).to(device), torch.cat(labels).to(device)

    # ----- training -------------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float], tuple]:
        cfg = self.cfg
        if self.subjective_batches is None:
            rois, humans, labels = self.best_crop_rois(batch)
            score, logits = self.model.pretraining_outputs(batch["image"], batch["crop_box"], batch["crop_valid"],
                                                           rois, humans)
        else:
            score = self.model(batch["image"], batch["crop_box"], crop_valid=batch["crop_valid"])
            pic_batch = move_batch(next(self.subjective_batches), self.device)
            rois, humans, labels = self.best_crop_rois(pic_batch)
            logits = self.model.user_logits(pic_batch["image"], rois, humans)
        objective_loss = crop_score_loss(score.float(), batch["score"], cfg.loss_type, batch["crop_valid"],
                                         score_mean=self.train_set.score_mean,
                                         rank_loss_weighting=cfg.rank_loss_weighting)
        subjective_loss = F.cross_entropy(logits.float(), labels)
        loss = objective_loss + cfg.subjective_loss_weight * subjective_loss
        parts = {"objective_loss": objective_loss.item(), "subjective_loss": subjective_loss.item(),
                 "total_loss": loss.item()}
        return loss, parts, (None, None, score)

    # ----- evaluation -----------------------------------------------------------------------
    @staticmethod
    def held_out(dataset, names: Sequence[str]) -> NamedSubset:
        wanted = set(names)
        return NamedSubset(dataset, [i for i, name in enumerate(dataset.names) if name in wanted])

    @cached_property
    def objective_val_set(self) -> NamedSubset:
        val_names = self.subjective_val_names if self.cfg.objective_set == "PIC" else self.val_names
        return self.held_out(self.objective_dataset(augment=False), val_names)

    @cached_property
    def subjective_val_set(self) -> NamedSubset:
        return self.held_out(self.pic_images(augment=False), self.subjective_val_names)

    @torch.no_grad()
    def user_accuracy(self) -> float:
        """Share of the training users' best crops of held-out PIC images the classifier attributes right."""
        self.model.eval()
        hits = total = 0
        for batch in bucketed_loader(self.subjective_val_set, self.cfg.images_per_step, self.cfg.num_workers):
            batch = move_batch(batch, self.device)
            rois, humans, labels = self.best_crop_rois(batch)
            hits += int((self.model.user_logits(batch["image"], rois, humans).argmax(dim=1) == labels).sum())
            total += len(labels)
        return hits / max(total, 1)

    def evaluate(self) -> dict[str, float]:
        objective = evaluate_scored(self.core, self.objective_val_set, self.cfg.images_per_step,
                                    self.cfg.num_workers, self.progress, "objective validation",
                                    self.autocast_dtype, self.cfg.channels_last)
        results = {key: objective[key] for key in ("srcc", "acc5", "acc10", "pcc")}
        results["user_acc"] = self.user_accuracy()
        self.model.train()
        return results

    def report_test(self) -> None:
        """Pre-training has no test split: test users are evaluated by finetune_PIC.py."""
        for name, best in self.best.items():
            print(f"best val {name} = {best['value']:.4f} at epoch {best['epoch']}: "
                  f"{self.checkpoint_dir}/best-{name}.pth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(usage="%(prog)s [--resume PATH] [config options]", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", metavar="PATH", help="continue from a last.pth training checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(preset=None)
    add_config_arguments(parser, config_PIC.Config)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> PICPretrainer:
    return launch(PICPretrainer, config_PIC.Config, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
