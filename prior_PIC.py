"""Train the PIC prior model.

  python prior_PIC.py --checkpoint experiments/PIC_mobilenetv2/checkpoints/pretrain.pth --data-root DATA
  python prior_PIC.py --demo --demo-dir demo_runs   # the demo prior (after pretrain_PIC.py --demo)

The checkpoint's variant decides; a bare state_dict of PIC's release is official. Official (the
published recipe): every parameter is trained
through the training users of ``PIC_release`` (``prior/<user>_train.csv``) in turn,
`official_prior_epochs` (20) epochs per user, batch 1, Adam at `official_prior_lr` (1e-3), loss
0.8 x fidelity + smooth-L1, each image's crops in their fixed order (one personal offset per
position); the mean metrics on ``prior/<user>_val.csv`` are reported and checkpoints/prior.pth
written. Embedding (this project's variant), the rest of this text: the preference module,
jointly over all training users.

The pre-trained backbone and both branches are frozen: the objective score and the description
(subjective feature + geometry) of every candidate crop of the training users' images are computed
once, for the image and its mirror image. Training is episodic, like the few-shot use it prepares
for: an episode takes a training user, one of the user's images (the query) and `support_images`
other images of the same user; the user's embedding is computed from the support images' best
crops, the query's crops are scored as objective + preference(embedding), and the score losses
(`loss_type`) compare them with the user's scores. `prior_episodes_per_step` episodes per Adam
step, `prior_epochs` epochs of one episode per (user, image). After each epoch: the mean over users
of SRCC/Acc5 on held-out images (the `val_fraction` rule pre-training used), each user embedded
from `support_images` of their other images; the best epoch is saved as prior.pth with every
training user's embedding (from all their images), ready for finetune_PIC.py and the crop tool.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

import config_PIC
from cropping_model import crop_score_loss, load_crop_model
from pic_dataset import PICImageDataset, load_pic_data
from pic_model import PICModel, PICOfficialModel, PreferenceModule, is_official_pic_state_dict, user_images
from untils.atomic import copy_file_atomic
from untils.checkpoint import config_to_dict, read_checkpoint, save_atomic
from untils.cli import run_script
from untils.config import given_config_options
from untils.pic_demo import demo_pretrain_checkpoint, demo_prior_checkpoint, demo_prior_options
from untils.pic_features import (
    VIEWS,
    UserImage,
    embed_user,
    evaluate_user,
    extract_features,
    single_threaded,
    user_scores,
)
from untils.pic_recipe import evaluate_images, rated_images, train_on_images
from untils.pic_release_layout import load_release_layout
from untils.runtime import resolve_device, seed_everything
from untils.training import held_out_images, summary_writer


def mean_metrics(per_user: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([metrics[key] for metrics in per_user])) for key in per_user[0]}


def episode_loss(
    preference: PreferenceModule, query: UserImage, support: Sequence[UserImage], cfg, generator: torch.Generator
) -> torch.Tensor:
    """Score losses of the query's crops for the user embedded from ``support`` (random views)."""
    views = torch.randint(VIEWS, (len(support) + 1,), generator=generator).tolist()
    evidence = [example.evidence[view] for example, view in zip(support, views, strict=False)]  # views[-1]: query
    embedding = preference.embed(torch.cat(evidence))
    predicted = user_scores(preference, embedding, query, views[-1])
    return crop_score_loss(predicted, query.scores, cfg.loss_type, rank_loss_weighting=cfg.rank_loss_weighting)


def validate_prior(
    preference: PreferenceModule,
    train: dict[str, list[UserImage]],
    val: dict[str, list[UserImage]],
    support_images: int,
    seed: int,
) -> dict[str, float]:
    """Mean over users of the metrics of their held-out images, each user embedded from
    ``support_images`` of their training images (the same ones every epoch)."""
    per_user = []
    for user, examples in val.items():
        if not examples or not train.get(user):
            continue
        chosen = torch.randperm(len(train[user]), generator=torch.Generator().manual_seed(seed))[:support_images]
        with torch.no_grad():
            embedding = embed_user(preference, [train[user][i] for i in chosen.tolist()])
        per_user.append(evaluate_user(preference, embedding, examples))
    if not per_user:
        raise ValueError("no training user has both training and held-out images to validate the prior on")
    return mean_metrics(per_user)


def train_prior(
    preference: PreferenceModule,
    train: dict[str, list[UserImage]],
    val: dict[str, list[UserImage]],
    cfg,
    writer: Any | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Episodic training of ``preference``; leaves it at the epoch with the best validation SRCC.

    Returns one row per epoch (epoch, loss, validation metrics).
    """
    episodes = [
        (user, index) for user, examples in train.items() if len(examples) > 1 for index in range(len(examples))
    ]
    if not episodes:
        raise ValueError("prior training needs training users with at least two training images each")
    optimizer = torch.optim.Adam(preference.parameters(), lr=cfg.prior_lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    best_srcc, best_state = -float("inf"), None
    for epoch in range(cfg.prior_epochs):
        preference.train()
        order = torch.randperm(len(episodes), generator=generator).tolist()
        total = 0.0
        starts = range(0, len(order), cfg.prior_episodes_per_step)
        for start in tqdm(
            starts, desc=f"prior epoch {epoch + 1}/{cfg.prior_epochs}", disable=not progress, leave=False
        ):
            losses = []
            for user, index in (episodes[i] for i in order[start : start + cfg.prior_episodes_per_step]):
                others = [i for i in range(len(train[user])) if i != index]
                picked = torch.randperm(len(others), generator=generator)[: cfg.support_images].tolist()
                losses.append(
                    episode_loss(
                        preference, train[user][index], [train[user][others[i]] for i in picked], cfg, generator
                    )
                )
            loss = torch.stack(losses).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(losses)
        preference.eval()
        metrics = validate_prior(preference, train, val, cfg.support_images, cfg.seed)
        row = {
            "epoch": epoch,
            "loss": total / len(episodes),
            **{f"val_{key}": metrics[key] for key in ("srcc", "acc5", "acc10", "pcc")},
        }
        history.append(row)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(f"prior/{key}", value, epoch)
        print(
            f"prior epoch {epoch + 1}/{cfg.prior_epochs}: loss={row['loss']:.4f} | val: "
            + ", ".join(f"{k[4:]}={row[k]:.3f}" for k in row if k.startswith("val_")),
            flush=True,
        )
        if metrics["srcc"] > best_srcc:  # NaN (constant scores) never wins
            best_srcc = metrics["srcc"]
            best_state = {k: v.detach().clone() for k, v in preference.state_dict().items()}
    if best_state is not None:
        preference.load_state_dict(best_state)
    preference.eval()
    return history


def prior_official(content: dict, overrides: dict, progress: bool) -> dict:
    """The official prior (module docstring): every parameter, through the training users in turn."""
    model = cast(PICOfficialModel, load_crop_model(content, overrides=overrides))
    cfg = model.cfg
    seed_everything(cfg.seed)
    release = load_release_layout(cfg.PIC_release, cfg.num_positions)
    cfg.exp_name = cfg.exp_name or f"{cfg.prefix}_prior"
    exp_path = cfg.create_experiment_dir()
    generator = torch.Generator().manual_seed(cfg.seed)
    history = []
    for user in tqdm(release.train_users, desc="prior users", disable=not progress):
        split = release.prior[user]
        losses = train_on_images(
            model,
            rated_images(release.image_dir, split.train, cfg.channel_order == "bgr"),
            cfg.official_prior_epochs,
            cfg.official_prior_lr,
            0.8,
            1.0,
            generator,
        )
        history.append({"user": user, "loss": losses[-1]})
    val = {
        user: evaluate_images(model, rated_images(release.image_dir, split.val, cfg.channel_order == "bgr"))
        for user, split in release.prior.items()
        if split.val
    }
    metrics = {name: float(np.mean([table[name] for table in val.values()])) for name in next(iter(val.values()))}
    path = os.path.join(exp_path, "checkpoints", "prior.pth")
    save_atomic(
        {
            "model": model.state_dict(),
            "config": config_to_dict(cfg),
            "model_type": "PIC",
            "stage": "prior",
            "metrics": metrics,
            "history": history,
        },
        path,
    )
    print(f"official prior model (val srcc={metrics['srcc']:.4f} over {len(val)} users) saved to {path}", flush=True)
    return {"checkpoint": path, "exp_path": exp_path, "history": history, "best": metrics}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = config_PIC.script_parser(__doc__, with_demo=True)
    args = parser.parse_args(argv)
    overrides = given_config_options(args)
    if args.demo:  # the demo prior's second step (untils/pic_demo.py); the given options win
        args.checkpoint = args.checkpoint or demo_pretrain_checkpoint(args.demo_dir)
        overrides = {**demo_prior_options(args.demo_dir), **overrides}
    elif args.checkpoint is None:
        parser.error("--checkpoint is required (or --demo)")
    result = train_prior_of(args, overrides)
    if args.demo:
        copy_file_atomic(result["checkpoint"], demo_prior_checkpoint(args.demo_dir))
        print(f"demo prior saved to {demo_prior_checkpoint(args.demo_dir)}", flush=True)
    return result


def train_prior_of(args, overrides: dict) -> dict:
    """The prior of ``args.checkpoint``'s variant, with the config ``overrides``."""
    content = read_checkpoint(args.checkpoint, trusted=args.trust_checkpoint)
    if "model_type" not in content and is_official_pic_state_dict(content.get("model", {})):
        return prior_official(content, overrides, not args.no_progress)  # a release file
    if content.get("model_type") != "PIC":
        raise SystemExit(
            f"{args.checkpoint} is not a PIC checkpoint (model_type={content.get('model_type')!r}); "
            "give a checkpoint of pretrain_PIC.py or a state_dict of PIC's release"
        )
    if is_official_pic_state_dict(content.get("model", {})):
        return prior_official(content, overrides, not args.no_progress)
    model = cast(PICModel, load_crop_model(content, overrides=overrides).requires_grad_(False))
    cfg = model.cfg
    device = resolve_device(cfg.device, cfg.gpu_id)
    model.to(device)
    seed_everything(cfg.seed)
    cfg.exp_name = cfg.exp_name or f"{cfg.prefix}_prior"
    exp_path = cfg.create_experiment_dir()
    print(f"prior experiment {exp_path} on {device}", flush=True)
    data = load_pic_data(cfg)
    dataset = PICImageDataset(cfg, data, data.train_users, augment=False)
    cache = extract_features(model, dataset, device, cfg.images_per_step, cfg.num_workers, not args.no_progress)
    preference = model.preference.cpu()
    preference.requires_grad_(True)
    preference.set_feature_statistics(
        torch.cat([entry.features.reshape(-1, entry.features.shape[-1]) for entry in cache.values()])
    )
    held_out = set(held_out_images(dataset.names, cfg.val_fraction, cfg.seed))
    train, val = {}, {}
    for user in data.train_users:
        names = data.images_of(user)
        train[user] = user_images(
            data, dataset, cache, user, [n for n in names if n not in held_out], preference, cfg.best_crops
        )
        val[user] = user_images(
            data, dataset, cache, user, [n for n in names if n in held_out], preference, cfg.best_crops
        )
    writer = summary_writer(os.path.join(exp_path, "logs"))
    with single_threaded():
        history = train_prior(preference, train, val, cfg, writer, not args.no_progress)
    writer.close()
    with torch.no_grad():
        embeddings = {user: embed_user(preference, train[user] + val[user]) for user in data.train_users}
    best = max(history, key=lambda row: -float("inf") if np.isnan(row["val_srcc"]) else row["val_srcc"])
    path = os.path.join(exp_path, "checkpoints", "prior.pth")
    save_atomic(
        {
            "model": model.cpu().state_dict(),
            "config": config_to_dict(cfg),
            "model_type": "PIC",
            "stage": "prior",
            "epoch": best["epoch"],
            "metrics": best,
            "user_embeddings": {user: vector.tolist() for user, vector in embeddings.items()},
        },
        path,
    )
    with open(os.path.join(exp_path, "prior_results.csv"), "w", newline="") as stream:
        writer_csv = csv.DictWriter(stream, fieldnames=list(history[0]))
        writer_csv.writeheader()
        writer_csv.writerows(history)
    print(f"prior model (epoch {best['epoch'] + 1}, val srcc={best['val_srcc']:.4f}) saved to {path}", flush=True)
    return {"checkpoint": path, "exp_path": exp_path, "history": history, "best": best}


if __name__ == "__main__":
    raise SystemExit(run_script(main))
