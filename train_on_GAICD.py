"""Train the human-centric cropping model (or an ablation of it) on GAICD.

  python train_on_GAICD.py --demo                         # the whole pipeline on the CPU, no dataset needed
  python train_on_GAICD.py --data-root /data/crop         # the paper's recipe (config_GAICD.py)
  python train_on_GAICD.py --preset PA-2part --max_epoch 40
  python train_on_GAICD.py --resume experiments/GAICD_PA_CP/checkpoints/last.pth

Each step scores `view_per_image` random candidate crops of an image; the loss is the score
losses of `loss_type` plus `content_loss_weight` x L1(predicted, pseudo heat map). Adam, cosine
schedule after `warmup_epochs` linear warm-up epochs, gradients accumulated to `batch_size`
images. After each epoch: SRCC/Acc5/Acc10 on the human-centric and the full evaluation set, a
CSV of all epochs with the best row per metric, and best-<metric>.pth checkpoints.
By default (`--selection test`) the best epochs are picked on the test split, as the release (and
the paper) did; `--selection val` picks them on images held out from train and reports the test
split once. `--preset GAIC-official` trains as GAIC's release: the whole model in eval mode
(`train_in_eval_mode`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import torch

import config_GAICD
from config_GAICD import PRESETS
from cropping_dataset import CroppingDataset, GAICDataset, evaluation_dataset, heat_map_sources
from cropping_model import CropOutput, build_crop_model, crop_training_loss
from untils.batching import NamedSubset
from untils.cli import run_script
from untils.demo_data import build_demo_dataset
from untils.evaluation import evaluate_scored
from untils.experiment import build_parser, launch
from untils.pseudo_heatmaps import generate_heatmaps
from untils.training import Trainer, split_validation, subset_of

METRICS = ("human_srcc", "human_acc5", "human_acc10", "srcc", "acc5", "acc10")


class GAICDTrainer(Trainer):
    """Selects on GAICD's human-centric subset and all its images: the held-out training images
    (``--selection val``) or the test split (``--selection test``, as the release)."""

    selection_metrics = METRICS

    def evaluate(self) -> dict[str, float]:
        if self.cfg.selection == "test":
            return self.evaluate_split("test", None)
        return self.evaluate_split("train", self.val_names)

    def evaluate_test(self) -> dict[str, float]:
        return self.evaluate_split("test", None)

    def evaluate_split(self, split: str, names: list[str] | None) -> dict[str, float]:
        results: dict[str, float] = {}
        for prefix, only_human in (("human_", True), ("", False)):
            dataset: CroppingDataset | NamedSubset = evaluation_dataset(self.cfg, "GAICD", only_human, split)
            if names is not None:
                dataset = subset_of(dataset, names)
            if len(dataset) == 0:
                continue  # e.g. a small validation split without a person
            metrics = evaluate_scored(
                self.core,
                dataset,
                self.cfg.images_per_step,
                self.cfg.num_workers,
                self.progress,
                f"GAICD {split}{' human' if only_human else ''}",
                self.autocast_dtype,
                self.cfg.channels_last,
            )
            for key in ("srcc", "acc5", "acc10", "pcc", "wacc5", "wacc10"):
                results[prefix + key] = metrics[key]
        return results


def build_trainer(cfg: config_GAICD.Config, exp_path: str, device: torch.device, progress: bool) -> GAICDTrainer:
    # the data first: a wrong data root is reported before a missing ImageNet weights file
    full = GAICDataset(cfg, split="train", only_human_images=cfg.only_human, keep_aspect_ratio=cfg.keep_aspect_ratio)
    train_set, val_names = split_validation(full, cfg)
    model = build_crop_model(cfg, cfg.model_type)

    def loss_fn(output: CropOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the score losses of cfg.loss_type + cfg.content_loss_weight x L1(heat map, pseudo heat map)
        return crop_training_loss(output, batch, cfg, train_set.score_mean)

    return GAICDTrainer(cfg, exp_path, device, model, train_set, val_names, loss_fn, progress)


def prepare_demo(demo_dir: str, progress: bool, given: dict[str, Any]) -> dict[str, Any]:
    """Build the generated human-centric dataset and its pseudo heat maps; return the demo's options."""
    data_root = os.path.join(demo_dir, "data")
    if not os.path.exists(os.path.join(data_root, "GAICD", "image_crop.json")):
        print(f"building the demo dataset in {data_root} ...", flush=True)
        build_demo_dataset(data_root, num_train=32, num_test=12)
    options: dict[str, Any] = {
        "data_root": data_root,
        "backbone": "mobilenetv2",
        "pretrained": False,
        "device": "cpu",
        "max_epoch": 3,
        "warmup_epochs": 1,
        "num_workers": 0,
        "lr": 3e-4,
        "view_per_image": 16,
        "image_size": (192, 192),
        "exp_root": os.path.join(demo_dir, "experiments"),
        "display_freq": 10,
        "visualize_freq": 25,
        "selection": "test",
        "exp_name": "demo",
        "visualize_heat_map": True,
        "visualize_partition_feature": True,
    }
    options.update(given)
    cfg = config_GAICD.Config(**options)
    print("generating pseudo heat maps ...", flush=True)
    generate_heatmaps("GAICD", heat_map_sources("GAICD", cfg), cfg.heat_map_dir, workers=1, progress=progress)
    return options


def print_next_steps(trainer: GAICDTrainer) -> None:
    """Where the demo's model is, and a ready command that crops one of its test photos with it."""
    cfg = trainer.cfg
    checkpoint = os.path.join(trainer.checkpoint_dir, "best-srcc.pth")
    photo = os.path.join(cfg.GAIC_image, "test", evaluation_dataset(cfg, "GAICD", True).names[0])
    print(
        f"\ndemo model: {checkpoint}\ncrop a photo with it (the person box from the demo's annotations):\n"
        f"  python crop.py {photo} --checkpoint {checkpoint} --human-boxes {cfg.GAIC_human} "
        f"--top-k 3 --visualize --out {os.path.join(os.path.dirname(cfg.exp_root), 'crops')}"
    )


def main(argv: Sequence[str] | None = None) -> GAICDTrainer:
    args = build_parser(__doc__, config_GAICD.Config, PRESETS, with_demo=True).parse_args(argv)
    prepare = functools.partial(prepare_demo, args.demo_dir, not args.no_progress) if args.demo else None
    trainer = launch(build_trainer, config_GAICD.Config, args, PRESETS, prepare)
    if args.demo:
        print_next_steps(trainer)
    return trainer


if __name__ == "__main__":
    raise SystemExit(run_script(main))
