"""Proof of learning: a short CPU training on the generated human-centric data raises held-out SRCC.

This catches broken gradients anywhere from the RoI/RoD ops to the losses: the crops' scores follow
a composition rule relative to the person (untils/demo_data.py) that only a working model learns.
"""

from __future__ import annotations

import time

import torch

from config_GAICD import Config
from cropping_dataset import evaluation_dataset, heat_map_sources
from train_on_GAICD import build_trainer
from untils.demo_data import build_demo_dataset
from untils.evaluation import evaluate_scored
from untils.pseudo_heatmaps import generate_heatmaps
from untils.runtime import seed_everything


def test_short_training_learns_the_composition_rule(tmp_path):
    start = time.time()
    build_demo_dataset(tmp_path / "data", num_train=24, num_test=10, seed=1)
    cfg = Config(
        data_root=str(tmp_path / "data"),
        backbone="mobilenetv2",
        pretrained=False,
        device="cpu",
        image_size=(128, 128),
        max_epoch=3,
        warmup_epochs=1,
        lr=3e-4,
        view_per_image=16,
        num_workers=0,
        selection="test",
        exp_root=str(tmp_path / "exp"),
        seed=0,
    )
    generate_heatmaps("GAICD", heat_map_sources("GAICD", cfg), cfg.heat_map_dir, workers=0)
    seed_everything(cfg.seed)
    trainer = build_trainer(cfg, cfg.create_experiment_dir(), torch.device("cpu"), progress=False)
    test_set = evaluation_dataset(cfg, "GAICD", only_human=False)
    before = evaluate_scored(trainer.model, test_set, progress=False)["srcc"]
    trainer.run()
    after = evaluate_scored(trainer.model, test_set, progress=False)["srcc"]
    print(f"held-out SRCC: untrained {before:.3f} -> trained {after:.3f} ({time.time() - start:.0f} s)")
    assert after >= 0.5
    assert after > before + 0.2
