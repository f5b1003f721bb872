"""Train the human-centric cropping model on CPC and evaluate it on FCDB and FLMS.

  python train_on_CPC.py --data-root /data/crop                 # the paper's recipe (config_CPC.py)
  python train_on_CPC.py --data-root /data/crop --only_human true
  python train_on_CPC.py --resume experiments/CPC_PA_CP/checkpoints/last.pth

The release's recipe: images resized to a fixed 256x256, 8 images per step with every candidate
crop, the score losses once over the batch's crops (`--view_per_image N` samples views and
`--score_loss_over image` averages per-image losses instead). After each epoch the model crops
FCDB and FLMS with the 1,745 predefined anchors: IoU and Disp on the human-centric images of both
pooled (the paper's column), on each apart, and on the full test sets. By default (`--selection
test`, the release's protocol) the best epochs are picked on those test sets; `--selection val`
picks them on CPC images held out from training (SRCC, Acc5, Acc10) and reports FCDB/FLMS once at
the end. Same engine as train_on_GAICD.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import config_CPC
from config_GAICD import PRESETS
from cropping_dataset import CPCDataset, evaluation_dataset
from cropping_model import CropOutput, build_crop_model, crop_training_loss
from untils.cli import run_script
from untils.evaluation import evaluate_anchors, evaluate_scored, pooled_anchor_metrics
from untils.experiment import build_parser, launch
from untils.training import Trainer, split_validation, subset_of

TEST_PROTOCOLS = (("FCDB", True), ("FLMS", True), ("FCDB", False), ("FLMS", False))
# human_*: FCDB's and FLMS's human-centric images pooled, the paper's column (and the release's selection)
TEST_METRICS = ("human_iou", "human_disp") + tuple(
    f"{name}{'_human' if human else ''}_{metric}" for name, human in TEST_PROTOCOLS for metric in ("iou", "disp")
)
VAL_METRICS = ("srcc", "acc5", "acc10")


class CPCTrainer(Trainer):
    """Trains on CPC; selects on FCDB/FLMS (release) or on held-out CPC images."""

    lower_is_better = frozenset(m for m in TEST_METRICS if m.endswith("disp"))

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.selection_metrics = TEST_METRICS if self.cfg.selection == "test" else VAL_METRICS

    def evaluate(self) -> dict[str, float]:
        if self.cfg.selection == "test":
            return self.evaluate_test()
        if self.val_names is None:
            raise ValueError("selection=val needs the held-out images (split_validation's val_names)")
        validation = CPCDataset(
            self.cfg, only_human_images=self.cfg.only_human, keep_aspect_ratio=self.cfg.keep_aspect_ratio, augment=False
        )
        metrics = evaluate_scored(
            self.core,
            subset_of(validation, self.val_names),
            self.cfg.images_per_step,
            self.cfg.num_workers,
            self.progress,
            "CPC validation",
            self.autocast_dtype,
            self.cfg.channels_last,
        )
        return {key: metrics[key] for key in ("srcc", "acc5", "acc10", "pcc", "wacc5", "wacc10")}

    def evaluate_test(self) -> dict[str, float]:
        """IoU, Disp and recall on FCDB and FLMS: human-centric subsets pooled and apart, full test sets."""
        results, human = {}, []
        for dataset, only_human in TEST_PROTOCOLS:
            name = f"{dataset}{'_human' if only_human else ''}"
            metrics = evaluate_anchors(
                self.core,
                evaluation_dataset(self.cfg, dataset, only_human),
                self.cfg.images_per_step,
                self.cfg.num_workers,
                self.progress,
                name,
                self.autocast_dtype,
                self.cfg.channels_last,
            )
            results.update({f"{name}_{key}": metrics[key] for key in ("iou", "disp", "recall")})
            if only_human:
                human.append(metrics)
        pooled = pooled_anchor_metrics(human)
        return {**{f"human_{key}": pooled[key] for key in ("iou", "disp", "recall")}, **results}


def build_trainer(cfg: config_CPC.Config, exp_path: str, device: torch.device, progress: bool) -> CPCTrainer:
    full = CPCDataset(cfg, only_human_images=cfg.only_human, keep_aspect_ratio=cfg.keep_aspect_ratio)
    train_set, val_names = split_validation(full, cfg)
    model = build_crop_model(cfg, cfg.model_type)  # after the data: a wrong data root is reported first

    def loss_fn(output: CropOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the score losses of cfg.loss_type (once over the batch's crops by default) + the heat-map L1
        return crop_training_loss(output, batch, cfg, train_set.score_mean)

    return CPCTrainer(cfg, exp_path, device, model, train_set, val_names, loss_fn, progress)


def main(argv: Sequence[str] | None = None) -> CPCTrainer:
    args = build_parser(__doc__, config_CPC.Config, PRESETS).parse_args(argv)
    return launch(build_trainer, config_CPC.Config, args, PRESETS)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
