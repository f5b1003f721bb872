"""Train the PIC prior model: the individual preference module, jointly over all training users.

  python prior_PIC.py --checkpoint experiments/PIC_mobilenetv2/checkpoints/best-srcc.pth --data-root DATA

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

import argparse
import contextlib
import csv
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from tensorboardX import SummaryWriter
from tqdm import tqdm

import config_PIC
from cropping_model import PICModel, PreferenceModule, crop_score_loss
from test import bucketed_loader, move_batch
from untils.boxes import flip_boxes_horizontal
from untils.checkpoint import config_from_checkpoint, config_to_dict, load_model_weights, read_checkpoint, save_atomic
from untils.config import add_config_arguments
from untils.metrics import gaicd_metrics
from untils.pic_data import PICData, PICImageDataset, best_crop_indices, held_out_images, load_pic_data
from untils.runtime import resolve_device, seed_everything

VIEWS = 2  # the image as it is, and mirrored


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one CPU thread: the preference module's tensors are so small that sharing
    them between threads costs far more than it saves (25x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class ImageFeatures:
    """What the frozen model says about an image's candidate crops, per view (as is, mirrored)."""
    objective: torch.Tensor  # (VIEWS, N)
    features: torch.Tensor   # (VIEWS, N, F) descriptions for the preference module


@dataclass
class UserImage:
    """One image a user rated: the frozen model's outputs for the user's crops, and the user's scores."""
    name: str
    objective: torch.Tensor  # (VIEWS, n)
    features: torch.Tensor   # (VIEWS, n, F)
    scores: torch.Tensor     # (n,)
    evidence: torch.Tensor   # (VIEWS, best_crops, 2F) evidence rows of the user's best crops


@torch.no_grad()
def extract_features(model: PICModel, dataset: PICImageDataset, device: torch.device, images_per_batch: int = 1,
                     num_workers: int = 0, progress: bool = True) -> dict[str, ImageFeatures]:
    """Objective scores and descriptions of every crop of ``dataset``'s images, for both views."""
    model.eval()
    cache: dict[str, ImageFeatures] = {}
    for batch in tqdm(bucketed_loader(dataset, images_per_batch, num_workers), desc="crop features",
                      disable=not progress, leave=False):
        batch = move_batch(batch, device)
        valid = batch["crop_valid"]
        per_view = []
        for mirrored in (False, True):
            image, crop_box, human_box = batch["image"], batch["crop_box"], batch["human_box"]
            if mirrored:
                width = image.shape[-1]
                image = image.flip(-1)
                crop_box, human_box = flip_boxes_horizontal(crop_box, width), flip_boxes_horizontal(human_box, width)
            per_view.append(model.crop_outputs(image, crop_box, human_box, valid))
        for index, name in enumerate(batch["name"]):
            rows = [view_index == index for _, _, view_index in per_view]
            cache[name] = ImageFeatures(
                objective=torch.stack([objective[keep] for (objective, _, _), keep in zip(per_view, rows)]).cpu(),
                features=torch.stack([features[keep] for (_, features, _), keep in zip(per_view, rows)]).cpu())
    return cache


def user_images(data: PICData, dataset: PICImageDataset, cache: dict[str, ImageFeatures], user: str,
                names: Sequence[str], preference: PreferenceModule, best_crops: int) -> list[UserImage]:
    """The ``names`` a user rated, ready for episodes and evaluation (evidence uses ``preference``'s
    feature statistics, which must be set first)."""
    examples = []
    for name in names:
        rows = torch.from_numpy(dataset.crop_index[(user, name)])
        scores = torch.from_numpy(data.annotations[user][name].scores).float()
        features = cache[name].features[:, rows]
        best = torch.from_numpy(best_crop_indices(scores.numpy(), best_crops))
        with torch.no_grad():
            evidence = torch.stack([preference.evidence(features[view], best) for view in range(VIEWS)])
        examples.append(UserImage(name, cache[name].objective[:, rows], features, scores, evidence))
    return examples


def embed_user(preference: PreferenceModule, examples: Sequence[UserImage], view: int = 0) -> torch.Tensor:
    """A user's embedding from the evidence of ``examples`` (their best crops, as seen in ``view``)."""
    return preference.embed(torch.cat([example.evidence[view] for example in examples]))


def user_scores(preference: Optional[PreferenceModule], embedding: Optional[torch.Tensor], example: UserImage,
                view: int = 0) -> torch.Tensor:
    """Scores of an image's crops: objective, plus the preference when an embedding is given."""
    if embedding is None:
        return example.objective[view]
    return example.objective[view] + preference(example.features[view], embedding)


@torch.no_grad()
def evaluate_user(preference: Optional[PreferenceModule], embedding: Optional[torch.Tensor],
                  examples: Sequence[UserImage]) -> dict[str, float]:
    """GAICD metrics (Acc_K/N, SRCC, PCC) of a user's images, scored as :func:`user_scores` (view 0)."""
    return gaicd_metrics([example.scores for example in examples],
                         [user_scores(preference, embedding, example) for example in examples])


def mean_metrics(per_user: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([metrics[key] for metrics in per_user])) for key in per_user[0]}


def episode_loss(preference: PreferenceModule, query: UserImage, support: Sequence[UserImage], cfg,
                 generator: torch.Generator) -> torch.Tensor:
    """Score losses of the query's crops for the user embedded from ``support`` (random views)."""
    views = torch.randint(VIEWS, (len(support) + 1,), generator=generator).tolist()
    embedding = preference.embed(torch.cat([example.evidence[view] for example, view in zip(support, views)]))
    predicted = user_scores(preference, embedding, query, views[-1])
    return crop_score_loss(predicted, query.scores, cfg.loss_type, rank_loss_weighting=cfg.rank_loss_weighting)


def validate_prior(preference: PreferenceModule, train: dict[str, list[UserImage]],
                   val: dict[str, list[UserImage]], support_images: int, seed: int) -> dict[str, float]:
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


def train_prior(preference: PreferenceModule, train: dict[str, list[UserImage]], val: dict[str, list[UserImage]],
                cfg, writer: Optional[SummaryWriter] = None, progress: bool = True) -> list[dict[str, float]]:
    """Episodic training of ``preference``; leaves it at the epoch with the best validation SRCC.

    Returns one row per epoch (epoch, loss, validation metrics).
    """
    episodes = [(user, index) for user, examples in train.items() if len(examples) > 1
                for index in range(len(examples))]
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
        for start in tqdm(starts, desc=f"prior epoch {epoch + 1}/{cfg.prior_epochs}", disable=not progress,
                          leave=False):
            losses = []
            for user, index in (episodes[i] for i in order[start:start + cfg.prior_episodes_per_step]):
                others = [i for i in range(len(train[user])) if i != index]
                picked = torch.randperm(len(others), generator=generator)[:cfg.support_images].tolist()
                losses.append(episode_loss(preference, train[user][index], [train[user][others[i]] for i in picked],
                                           cfg, generator))
            loss = torch.stack(losses).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(losses)
        preference.eval()
        metrics = validate_prior(preference, train, val, cfg.support_images, cfg.seed)
        row = {"epoch": epoch, "loss": total / len(episodes),
               **{f"val_{key}": metrics[key] for key in ("srcc", "acc5", "acc10", "pcc")}}
        history.append(row)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(f"prior/{key}", value, epoch)
        print(f"prior epoch {epoch + 1}/{cfg.prior_epochs}: loss={row['loss']:.4f} | val: "
              + ", ".join(f"{k[4:]}={row[k]:.3f}" for k in row if k.startswith("val_")), flush=True)
        if metrics["srcc"] > best_srcc:  # NaN (constant scores) never wins
            best_srcc = metrics["srcc"]
            best_state = {k: v.detach().clone() for k, v in preference.state_dict().items()}
    if best_state is not None:
        preference.load_state_dict(best_state)
    preference.eval()
    return history


def load_pretrained(path: str, given: dict,
                    checkpoint: Optional[dict] = None) -> tuple[PICModel, config_PIC.Config, torch.device]:
    """A PIC model with the weights of ``path`` (or of ``checkpoint``, already read from it), frozen,
    in eval mode on the config's device, its config (``given`` options win) and that device."""
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    if checkpoint.get("model_type") != "PIC":
        raise SystemExit(f"{path} is not a PIC checkpoint (model_type={checkpoint.get('model_type')!r}); "
                         "give a checkpoint of pretrain_PIC.py")
    cfg = config_from_checkpoint(checkpoint, config_PIC.Config, given)
    model = PICModel(cfg, loadweights=False)
    load_model_weights(model, checkpoint)
    model.requires_grad_(False)
    device = resolve_device(cfg.device, cfg.gpu_id)
    return model.to(device).eval(), cfg, device


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="the checkpoint to start from")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, config_PIC.Config)
    return parser


def given_options(args: argparse.Namespace) -> dict:
    return {key[len("cfg__"):]: value for key, value in vars(args).items() if key.startswith("cfg__")}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser(__doc__).parse_args(argv)
    model, cfg, device = load_pretrained(args.checkpoint, given_options(args))
    seed_everything(cfg.seed)
    cfg.exp_name = cfg.exp_name or f"{cfg.prefix}_prior"
    exp_path = cfg.create_experiment_dir()
    print(f"prior experiment {exp_path} on {device}", flush=True)
    data = load_pic_data(cfg)
    dataset = PICImageDataset(cfg, data, data.train_users, augment=False)
    cache = extract_features(model, dataset, device, cfg.images_per_step, cfg.num_workers, not args.no_progress)
    preference = model.preference.cpu()
    preference.requires_grad_(True)
    preference.set_feature_statistics(torch.cat([entry.features.reshape(-1, entry.features.shape[-1])
                                                 for entry in cache.values()]))
    held_out = set(held_out_images(dataset.names, cfg.val_fraction, cfg.seed))
    train, val = {}, {}
    for user in data.train_users:
        names = data.images_of(user)
        train[user] = user_images(data, dataset, cache, user, [n for n in names if n not in held_out], preference,
                                  cfg.best_crops)
        val[user] = user_images(data, dataset, cache, user, [n for n in names if n in held_out], preference,
                                cfg.best_crops)
    writer = SummaryWriter(log_dir=os.path.join(exp_path, "logs"))
    with single_threaded():
        history = train_prior(preference, train, val, cfg, writer, not args.no_progress)
    writer.close()
    with torch.no_grad():
        embeddings = {user: embed_user(preference, train[user] + val[user]) for user in data.train_users}
    best = max(history, key=lambda row: -float("inf") if np.isnan(row["val_srcc"]) else row["val_srcc"])
    path = os.path.join(exp_path, "checkpoints", "prior.pth")
    save_atomic({"model": model.cpu().state_dict(), "config": config_to_dict(cfg), "model_type": "PIC",
                 "stage": "prior", "epoch": best["epoch"], "metrics": best,
                 "user_embeddings": {user: vector.tolist() for user, vector in embeddings.items()}}, path)
    with open(os.path.join(exp_path, "prior_results.csv"), "w", newline="") as stream:
        writer_csv = csv.DictWriter(stream, fieldnames=list(history[0]))
        writer_csv.writeheader()
        writer_csv.writerows(history)
    print(f"prior model (epoch {best['epoch'] + 1}, val srcc={best['val_srcc']:.4f}) saved to {path}", flush=True)
    return {"checkpoint": path, "exp_path": exp_path, "history": history, "best": best}


if __name__ == "__main__":
    main()
