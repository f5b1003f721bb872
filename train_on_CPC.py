"""Train the human-centric cropping model on CPC and evaluate it on FCDB and FLMS.

  python train_on_CPC.py --data-root /data/crop                 # the paper's recipe (config_CPC.py)
  python train_on_CPC.py --data-root /data/crop --only_human true
  python train_on_CPC.py --resume experiments/CPC_PA_CP/checkpoints/last.pth

Images are resized to a fixed 256x256, 8 images per step with 16 random views each. After each
epoch the model crops FCDB and FLMS (human-centric subsets and full test sets) with the 1,745
predefined anchors: IoU and Disp. `--selection test` picks the best epochs on those test sets,
as the release did; the default `val` picks them on CPC images held out from training (SRCC,
Acc5, Acc10) and reports FCDB/FLMS once at the end. Same engine as train_on_GAICD.py.
"""
from __future__ import annotations

import csv
import os
from typing import Optional, Sequence

import config_CPC
from cropping_dataset import CPCDataset
from test import evaluate_on_FCDB_and_FLMS, evaluate_scored
from train_on_GAICD import NamedSubset, Trainer, build_parser, launch
from untils.checkpoint import load_model_weights

TEST_PROTOCOLS = (("FCDB", True), ("FLMS", True), ("FCDB", False), ("FLMS", False))
TEST_METRICS = tuple(f"{name}{'_human' if human else ''}_{metric}"
                     for name, human in TEST_PROTOCOLS for metric in ("iou", "disp"))
VAL_METRICS = ("val_srcc", "val_acc5", "val_acc10")


class CPCTrainer(Trainer):
    """Trains on CPC; selects on FCDB/FLMS (release) or on held-out CPC images."""

    lower_is_better = frozenset(m for m in TEST_METRICS if m.endswith("disp"))

    def __init__(self, cfg, exp_path, device, progress: bool = True) -> None:
        super().__init__(cfg, exp_path, device, progress)
        self.selection_metrics = TEST_METRICS if cfg.selection == "test" else VAL_METRICS

    def build_training_set(self):
        full = CPCDataset(self.cfg, only_human_images=self.cfg.only_human,
                          keep_aspect_ratio=self.cfg.keep_aspect_ratio)
        return self.split_validation(full)

    def evaluate(self) -> dict[str, float]:
        if self.cfg.selection == "test":
            return self.evaluate_fcdb_flms()
        base = self.train_set.dataset
        validation = CPCDataset(self.cfg, only_human_images=self.cfg.only_human,
                                keep_aspect_ratio=self.cfg.keep_aspect_ratio, augment=False)
        wanted = set(self.val_names)
        subset = NamedSubset(validation, [i for i, name in enumerate(base.names) if name in wanted])
        metrics = evaluate_scored(self.core, subset, self.cfg.images_per_step, self.cfg.num_workers,
                                  self.progress, "CPC validation", self.autocast_dtype, self.cfg.channels_last)
        self.model.train()
        return {f"val_{key}": metrics[key] for key in ("srcc", "acc5", "acc10", "pcc")}

    def evaluate_fcdb_flms(self) -> dict[str, float]:
        results = {}
        for dataset, only_human in TEST_PROTOCOLS:
            metrics = evaluate_on_FCDB_and_FLMS(self.core, self.cfg, dataset, only_human, self.cfg.num_workers,
                                                self.progress, self.cfg.images_per_step, self.autocast_dtype,
                                                self.cfg.channels_last)
            prefix = f"{dataset}{'_human' if only_human else ''}_"
            results.update({prefix + key: metrics[key] for key in ("iou", "disp", "recall")})
        self.model.train()
        return results

    def report_test(self) -> None:
        rows = []
        for name in self.selection_metrics:
            if name in self.best:  # the same on every rank, unlike the files rank 0 writes
                load_model_weights(self.core, os.path.join(self.checkpoint_dir, f"best-{name}.pth"))
                rows.append({"selected_by": name, "epoch": self.best[name]["epoch"],
                             **{k: round(v, 4) for k, v in self.evaluate_fcdb_flms().items()}})
        if rows and self.is_main:
            with open(os.path.join(self.exp_path, "test_results.csv"), "w", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            for row in rows:
                print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


def main(argv: Optional[Sequence[str]] = None) -> CPCTrainer:
    args = build_parser(__doc__, config_CPC.Config).parse_args(argv)
    return launch(CPCTrainer, config_CPC.Config, args)


if __name__ == "__main__":
    main()
