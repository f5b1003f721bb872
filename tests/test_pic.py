"""PIC end to end on a small generated benchmark (a few CPU minutes): pre-training, prior, fine-tuning.

The fine-tuned models must beat the generic model on the test users whose taste departs most
from the training users' average, and the checkpoints the crop tool loads must score like the report.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import config_PIC
import finetune_PIC
import pretrain_PIC
import prior_PIC
from benchmarks.bench_pic import QUICK, run_benchmark
from cropping_model import load_crop_model
from pic_dataset import PICUserDataset, load_pic_data
from untils.batching import evaluation_loader
from untils.checkpoint import read_checkpoint
from untils.demo_data import build_demo_dataset
from untils.inference import run_model
from untils.metrics import gaicd_metrics
from untils.pic_synthetic import build_pic_benchmark

pytestmark = pytest.mark.slow
MARGIN = 20.0  # SRCC points (x100) fine-tuning must gain over the generic model on departing users


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pic") / "bench"
    seed = QUICK.seeds[0]
    return out / f"seed-{seed}", run_benchmark(str(out), QUICK)["seeds"][seed]


def mean_of(rows, users, model, metric):
    return float(np.mean([row[metric] for row in rows if row["user"] in users and row["model"] == model]))


def test_finetuned_beats_generic_on_users_who_depart_from_the_average(quick_run):
    _, result = quick_run
    rows, departure = result["rows"]["embedding"][5], result["departure"]
    departing = sorted(departure, key=departure.get)[len(departure) // 2 :]
    srcc = {model: mean_of(rows, departing, model, "srcc") for model in finetune_PIC.MODELS}
    acc = {model: mean_of(rows, departing, model, "acc1_5") for model in finetune_PIC.MODELS}
    print(
        f"\ndeparting users {departing} (departure x100: {', '.join(f'{departure[u] * 100:.0f}' for u in departing)})"
    )
    for model in finetune_PIC.MODELS:
        print(f"  {model:10s} SRCC {srcc[model]:6.1f}  Acc1/5 {acc[model]:5.1f}")
    margin = srcc["finetuned"] - srcc["generic"]
    print(f"fine-tuned - generic SRCC margin: {margin:.1f} (required {MARGIN})")
    assert margin >= MARGIN
    for user in departing:
        assert mean_of(rows, [user], "finetuned", "srcc") > mean_of(rows, [user], "generic", "srcc"), user
    everyone = list(departure)
    gain = mean_of(rows, everyone, "finetuned", "srcc") - mean_of(rows, everyone, "prior-mean", "srcc")
    print(f"fine-tuned - prior with the mean user, all test users: {gain:.1f} SRCC")
    assert gain > 0  # the user's own data helps beyond what the geometry gives every user


def test_user_checkpoint_scores_the_held_out_images_as_reported(quick_run):
    out, result = quick_run
    user = result["rows"]["embedding"][5][0]["user"]
    path = out / "experiments" / "finetune-5" / "users" / f"{user}.pth"
    model = load_crop_model(str(path))
    assert user in model.user_embeddings and len(model.user_embeddings) > 1  # plus the prior's training users
    test_images = read_checkpoint(str(path))["finetune"]["test"]
    cfg = config_PIC.Config(
        data_root=str(out / "data"),
        pretrained=False,
        image_size=model.cfg.image_size,
        keep_aspect_ratio=model.cfg.keep_aspect_ratio,
    )
    dataset = PICUserDataset(cfg, load_pic_data(cfg), user, names=test_images)
    truth, predicted = [], []
    for batch in evaluation_loader(dataset, images_per_batch=3):
        with torch.no_grad():
            scores = run_model(model, batch, user=user).score
        valid = batch["crop_valid"]
        truth += [batch["score"][i][valid[i]] for i in range(len(scores))]
        predicted += [scores[i][valid[i]] for i in range(len(scores))]
    reported = next(
        row for row in result["rows"]["embedding"][5] if row["user"] == user and row["model"] == "finetuned"
    )
    assert 100 * gaicd_metrics(truth, predicted)["srcc"] == pytest.approx(reported["srcc"], abs=0.05)
    prior = load_crop_model(str(out / "experiments" / "prior" / "checkpoints" / "prior.pth"))
    trained_user = sorted(prior.user_embeddings)[0]
    with torch.no_grad():
        assert torch.isfinite(run_model(prior, next(iter(evaluation_loader(dataset))), user=trained_user).score).all()


def test_pretraining_with_gaicd_as_the_objective(tmp_path):
    build_demo_dataset(tmp_path, num_train=6, num_test=2, long_side=96)
    build_pic_benchmark(
        tmp_path,
        train_users_per_group=1,
        test_users_per_group=1,
        train_images=6,
        test_images=4,
        images_per_train_user=4,
        long_side=96,
    )
    trainer = pretrain_PIC.main(
        [
            "--data-root",
            str(tmp_path),
            "--variant",
            "embedding",
            "--objective_set",
            "GAICD",
            "--pretrained",
            "false",
            "--image_size",
            "64",
            "64",
            "--keep_aspect_ratio",
            "false",
            "--max_epoch",
            "1",
            "--warmup_epochs",
            "0",
            "--images_per_step",
            "2",
            "--batch_size",
            "2",
            "--view_per_image",
            "8",
            "--num_workers",
            "0",
            "--device",
            "cpu",
            "--exp_root",
            str(tmp_path / "exp"),
            "--no-progress",
        ]
    )
    assert set(trainer.val_names) <= set(trainer.train_set.dataset.names)  # GAICD images
    assert all(name.startswith("demo") for name in trainer.subjective_val_names)
    assert set(trainer.history[0]) >= {"srcc", "acc5", "user_acc"}
    checkpoint = read_checkpoint(f"{trainer.checkpoint_dir}/best-srcc.pth")
    assert checkpoint["model_type"] == "PIC" and checkpoint["config"]["num_users"] == 4


@pytest.mark.parametrize("script", [pretrain_PIC, prior_PIC, finetune_PIC])
def test_scripts_explain_themselves(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--data-root" in text and "--finetune_images" in text
