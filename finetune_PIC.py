"""Fine-tune the PIC prior model to new users from a few of their rated images, and report.

The checkpoint's variant decides; a bare state_dict of PIC's release is an official prior. Official
(the published recipe): for each user of
``PIC_release/finetune/<N>/train`` (N = `finetune_images`), the prior is reloaded and the whole
network trained on that user's N images, `official_finetune_epochs` (10) epochs, batch 1, Adam at
`official_finetune_lr` (1e-3), loss fidelity + 0.8 x smooth-L1, crops in their fixed order; the
report is on ``finetune/<N>/val/<user>_val.csv``: generic (the prior's objective branch), prior
(with the personal offsets), finetuned. The rest of this text is the embedding variant (ours).

  python finetune_PIC.py --checkpoint experiments/PIC_mobilenetv2_prior/checkpoints/prior.pth --data-root DATA
  python finetune_PIC.py --checkpoint prior.pth --data-root DATA --finetune_images 10 --users alice bob

Each user's images (default users: the test users of users.json) are split by
`pic_dataset.split_user_images`: `user_test_fraction` of them are held out for the report,
`finetune_images` (N) are fine-tuned on, and up to `finetune_val_images` of the rest choose the
fine-tuning step. The held-out images are never used for anything but the report. On them, per user
and averaged over users (x100: Acc_K/5, Acc_K/10, wAcc_K/5, wAcc_K/10 for K = 1..4, their
means Acc5, Acc10, wAcc5, wAcc10, SRCC, PCC):

  generic     the pre-trained objective branch (GAIC's scorer): no user information
  prior-mean  the prior model with the mean embedding of its training users: personalisation off
  prior       the prior model, the user embedded from the best crops of the N images, no gradient step
  finetuned   the prior after `finetune_steps` Adam steps over the N images (score losses plus
              `finetune_reg` x the pull towards the prior), at the validated step with the best SRCC
              (step 0, the prior itself, included)

`finetune_scope embedding` changes the user's embedding only; `head` also tunes a per-user copy of
the preference head (taste MLP and user weights). The backbone and both branches never change.
Writes results.csv (a row per user and model), results.md (means over users, then per user) and
users/<user>.pth, which `cropping_model.load_crop_model` loads to crop for that user (`crop.py --user`).
"""

from __future__ import annotations

import copy
import csv
import os
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

import config_PIC
from config_GAICD import MOS_MEAN
from cropping_model import load_crop_model
from pic_dataset import PICImageDataset, load_pic_data, split_user_images
from pic_model import (
    PICModel,
    PICOfficialModel,
    is_official_pic_state_dict,
    user_images,
)
from untils.checkpoint import config_to_dict, read_checkpoint, save_atomic
from untils.cli import run_script
from untils.config import given_config_options
from untils.pic_features import (
    embed_user,
    evaluate_user,
    extract_features,
    single_threaded,
)
from untils.pic_finetune import finetune_user, personal_checkpoint
from untils.pic_recipe import evaluate_images, rated_images, train_on_images
from untils.pic_release_layout import load_release_layout
from untils.runtime import resolve_device, seed_everything
from untils.training import summary_writer

MODELS = ("generic", "prior-mean", "prior", "finetuned")
METRICS = (
    "srcc",
    "pcc",
    "acc1_5",
    "acc2_5",
    "acc3_5",
    "acc4_5",
    "acc5",
    "acc1_10",
    "acc2_10",
    "acc3_10",
    "acc4_10",
    "acc10",
    "wacc1_5",
    "wacc2_5",
    "wacc3_5",
    "wacc4_5",
    "wacc5",
    "wacc1_10",
    "wacc2_10",
    "wacc3_10",
    "wacc4_10",
    "wacc10",
)
METRIC_TITLES = {
    "srcc": "SRCC",
    "pcc": "PCC",
    "acc5": "Acc5",
    "acc10": "Acc10",
    "wacc5": "wAcc5",
    "wacc10": "wAcc10",
    **{
        f"{kind}{k}_{n}": f"{title}{k}/{n}"
        for kind, title in (("acc", "Acc"), ("wacc", "wAcc"))
        for k in range(1, 5)
        for n in (5, 10)
    },
}


def result_row(user: str, model: str, metrics: dict[str, float], images: int, **extra) -> dict:
    return {
        "user": user,
        "model": model,
        "images": images,
        **extra,
        **{name: round(100 * metrics[name], 2) for name in METRICS},
    }


def summarise(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean over users of each metric, per model (the rows' values are already x100)."""
    return {
        model: {name: float(np.mean([row[name] for row in rows if row["model"] == model])) for name in METRICS}
        for model in MODELS
        if any(row["model"] == model for row in rows)
    }


def write_results(rows: Sequence[dict], exp_path: str, title: str) -> tuple[str, str]:
    """results.csv (every row) and results.md (means over users, then SRCC and Acc1/5 per user)."""
    csv_path, md_path = os.path.join(exp_path, "results.csv"), os.path.join(exp_path, "results.md")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(csv_path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    users = list(dict.fromkeys(row["user"] for row in rows))
    lines = [
        f"# {title}",
        "",
        f"Mean over {len(users)} users, held-out images (x100).",
        "",
        "| model | " + " | ".join(METRIC_TITLES[name] for name in METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    lines += [
        f"| {model} | " + " | ".join(f"{values[name]:.1f}" for name in METRICS) + " |"
        for model, values in summary.items()
    ]
    lines += [
        "",
        "Per user: SRCC / Acc1/5 (x100).",
        "",
        "| user | " + " | ".join(summary) + " |",
        "|---|" + "---:|" * len(summary),
    ]
    by_key = {(row["user"], row["model"]): row for row in rows}
    for user in users:
        cells = [f"{by_key[(user, model)]['srcc']:.1f} / {by_key[(user, model)]['acc1_5']:.0f}" for model in summary]
        lines.append(f"| {user} | " + " | ".join(cells) + " |")
    with open(md_path, "w") as stream:
        stream.write("\n".join(lines) + "\n")
    return csv_path, md_path


def finetune_official(checkpoint: dict, args) -> dict:
    """The official fine-tuning (module docstring) of every user of ``finetune/<N>/``."""
    if checkpoint.get("model_type") == "PIC" and checkpoint.get("stage") != "prior":
        raise SystemExit(
            f"{args.checkpoint} is not a prior model; give the prior.pth written by prior_PIC.py "
            "(or a state_dict of PIC's release)"
        )
    prior = cast(PICOfficialModel, load_crop_model(checkpoint, overrides=given_config_options(args)))
    cfg = prior.cfg
    seed_everything(cfg.seed)
    release = load_release_layout(cfg.PIC_release, cfg.num_positions)
    if cfg.finetune_images not in release.finetune:
        raise SystemExit(
            f"{cfg.PIC_release}/finetune has no {cfg.finetune_images}/ split (it has "
            f"{sorted(release.finetune) or 'none'}); pass --finetune_images with one of them"
        )
    by_user = release.finetune[cfg.finetune_images]
    users = args.users or sorted(by_user)
    unknown = [user for user in users if user not in by_user]
    if unknown:
        raise SystemExit(f"users {unknown} have no files in {cfg.PIC_release}/finetune/{cfg.finetune_images}/")
    cfg.exp_name = cfg.exp_name or f"{cfg.prefix}_finetune{cfg.finetune_images}"
    exp_path = cfg.create_experiment_dir()
    generator = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for user in tqdm(users, desc="users", disable=args.no_progress):
        support = rated_images(release.image_dir, by_user[user].train, cfg.channel_order == "bgr")
        test = rated_images(release.image_dir, by_user[user].val, cfg.channel_order == "bgr")
        model = copy.deepcopy(prior)
        train_on_images(model, support, cfg.official_finetune_epochs, cfg.official_finetune_lr, 1.0, 0.8, generator)
        evaluations = {
            "generic": evaluate_images(prior, test, personal=False),
            "prior": evaluate_images(prior, test),
            "finetuned": evaluate_images(model, test),
        }
        rows += [
            result_row(user, name, metrics, len(test), shots=cfg.finetune_images)
            for name, metrics in evaluations.items()
        ]
        if not args.no_save_users:
            save_atomic(
                {
                    "model": model.state_dict(),
                    "config": config_to_dict(cfg),
                    "model_type": "PIC",
                    "stage": "finetuned",
                    "user": user,
                    "finetune": {"support": list(by_user[user].train), "test": list(by_user[user].val)},
                },
                os.path.join(exp_path, "users", f"{user}.pth"),
            )
    csv_path, md_path = write_results(rows, exp_path, f"PIC (official), {cfg.finetune_images} images per user")
    print(f"results: {csv_path}, {md_path}", flush=True)
    return {"rows": rows, "summary": summarise(rows), "exp_path": exp_path}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = config_PIC.script_parser(__doc__)
    parser.add_argument("--users", nargs="+", metavar="ID", help="users to fine-tune to (default: the test users)")
    parser.add_argument("--no-save-users", action="store_true", help="do not write users/<user>.pth")
    args = parser.parse_args(argv)
    checkpoint = read_checkpoint(args.checkpoint, trusted=args.trust_checkpoint)
    if checkpoint.get("model_type") in ("PIC", None) and is_official_pic_state_dict(checkpoint.get("model", {})):
        return finetune_official(checkpoint, args)
    if (
        checkpoint.get("model_type") != "PIC"
        or not checkpoint.get("user_embeddings")
        or checkpoint.get("stage") != "prior"
    ):
        raise SystemExit(f"{args.checkpoint} is not a prior model; give the prior.pth written by prior_PIC.py")
    model = cast(PICModel, load_crop_model(checkpoint, overrides=given_config_options(args)).requires_grad_(False))
    cfg = model.cfg
    device = resolve_device(cfg.device, cfg.gpu_id)
    model.to(device)
    seed_everything(cfg.seed)
    cfg.exp_name = cfg.exp_name or f"{cfg.prefix}_finetune{cfg.finetune_images}"
    exp_path = cfg.create_experiment_dir()
    print(f"fine-tuning experiment {exp_path} on {device}", flush=True)
    data = load_pic_data(cfg)
    users = args.users or data.test_users
    unknown = [user for user in users if user not in data.annotations]
    if unknown or not users:
        raise SystemExit(
            f"unknown users {unknown} (users.json lists {', '.join(data.users)})"
            if unknown
            else f"{cfg.PIC_users} lists no test users; name users with --users"
        )
    splits = {
        user: split_user_images(
            user, data.images_of(user), cfg.finetune_images, cfg.finetune_val_images, cfg.user_test_fraction, cfg.seed
        )
        for user in users
    }
    dataset = PICImageDataset(cfg, data, users, augment=False)
    cache = extract_features(model, dataset, device, cfg.images_per_step, cfg.num_workers, not args.no_progress)
    model = model.cpu()
    preference = model.preference
    prior_users = {
        user: torch.as_tensor(vector, dtype=torch.float32) for user, vector in checkpoint["user_embeddings"].items()
    }
    mean_embedding = torch.stack(list(prior_users.values())).mean(dim=0)
    generator = torch.Generator().manual_seed(cfg.seed)
    writer = summary_writer(os.path.join(exp_path, "logs"))
    rows = []
    with single_threaded():
        for user in tqdm(users, desc="users", disable=args.no_progress):
            split = splits[user]
            support, val, test = (
                user_images(data, dataset, cache, user, names, preference, cfg.best_crops)
                for names in (split.support, split.val, split.test)
            )
            with torch.no_grad():
                prior_embedding = embed_user(preference, support)
            result = finetune_user(preference, support, val, cfg, generator, MOS_MEAN)
            for entry in result.history[1:]:
                writer.add_scalar(f"{user}/val_srcc", entry["val_srcc"], entry["step"])
            evaluations = {
                "generic": evaluate_user(None, None, test),
                "prior-mean": evaluate_user(preference, mean_embedding, test),
                "prior": evaluate_user(preference, prior_embedding, test),
                "finetuned": evaluate_user(result.preference, result.embedding, test),
            }
            rows += [
                result_row(
                    user,
                    name,
                    metrics,
                    len(test),
                    shots=cfg.finetune_images,
                    step=result.step if name == "finetuned" else "",
                )
                for name, metrics in evaluations.items()
            ]
            if not args.no_save_users:
                finetune = {"support": split.support, "val": split.val, "test": split.test}
                save_atomic(
                    personal_checkpoint(model.state_dict(), cfg, user, result, prior_users, finetune),
                    os.path.join(exp_path, "users", f"{user}.pth"),
                )
    writer.close()
    csv_path, md_path = write_results(
        rows, exp_path, f"PIC, {cfg.finetune_images} images per user (fine-tuning scope: {cfg.finetune_scope})"
    )
    for model_name, values in summarise(rows).items():
        shown = ", ".join(f"{METRIC_TITLES[key]}={values[key]:.1f}" for key in ("srcc", "acc1_5", "acc5", "acc10"))
        print(f"{model_name:10s} {shown}")
    print(f"results: {csv_path}, {md_path}", flush=True)
    return {"rows": rows, "summary": summarise(rows), "exp_path": exp_path}


if __name__ == "__main__":
    raise SystemExit(run_script(main))
