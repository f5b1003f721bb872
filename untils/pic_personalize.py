"""Personalized cropping for one person from their own ratings: the ranker of a loaded prior or
personal model (:class:`PICRanker`) and the personalization of an embedding-variant prior from a
ratings CSV (:func:`personalize_model`). ``pic_model.load_pic_ranker`` and
``pic_model.personalize_from_ratings`` load the checkpoints and call these; the model is taken as
it comes (``pic_model.PICModel`` / ``PICOfficialModel``), so this module needs nothing of the top
level.

The crops a person rates are the candidates :meth:`PICRanker.rank` returns (the model's own
candidate rule, ``untils.crop_candidates``), and their ratings are what fine-tuning learns from.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from untils.boxes import rescale_boxes
from untils.checkpoint import save_atomic
from untils.crop_candidates import boxes_in_input
from untils.cropper import Cropper
from untils.dataset_errors import DatasetError
from untils.pic_checks import best_crop_indices
from untils.pic_features import UserImage, single_threaded
from untils.pic_finetune import finetune_user, personal_checkpoint
from untils.pic_ratings import read_ratings_csv
from untils.preprocessing import photo_input
from untils.runtime import seed_everything

MIN_RATED_PHOTOS = 3  # fewer rated photos: personalize_model refuses (ValueError)
MIN_RATED_CROPS = 4  # rated crops per photo at least: the ranking losses compare crops of one photo
RANKER_KINDS = ("prior", "personal")
# a person's taste need not be one the prior's training users had: the preference head is tuned too
PERSONALIZATION_OPTIONS = {"finetune_scope": "head"}

Box = tuple[float, float, float, float]
Progress = Callable[[float, str], None]


class PICRanker:
    """A loaded PIC prior (``kind`` "prior", ``user`` None: the objective, generic score) or
    personal model (``kind`` "personal": scored as ``user``), CPU by default."""

    def __init__(self, model: Any, kind: str, user: str | None, checkpoint: str) -> None:
        if kind not in RANKER_KINDS:
            raise ValueError(f"ranker kind {kind!r}: expected one of {', '.join(RANKER_KINDS)}")
        self.kind, self.user, self.checkpoint = kind, user, checkpoint
        self.model = model
        with warnings.catch_warnings():  # a prior ranks by its generic score on purpose: no warning
            warnings.simplefilter("ignore")
            self.cropper = Cropper(model, checkpoint=checkpoint, user=user)

    def rank(self, image: Image.Image, human_box: Box | None) -> list[tuple[Box, float]]:
        """All candidates this model scores for the photo (boxes x1, y1, x2, y2 in the pixels of
        ``image``), best first, with scores. These boxes are the crops to offer for rating:
        ratings of them are what personalization learns from."""
        (ranked,) = self.cropper.rank(image, human_box).results
        return [
            ((float(x1), float(y1), float(x2), float(y2)), score)
            for (x1, y1, x2, y2), score in zip(ranked.boxes, ranked.scores, strict=True)
        ]


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(1.0, max(0.0, fraction)), message)


@torch.no_grad()
def rated_photo(
    model: Any, photo: Image.Image, name: str, boxes: np.ndarray, scores: np.ndarray, human_box: Box | None
) -> UserImage:
    """What the frozen model says about a person's rated crops ``boxes`` (n, 4, photo pixels) of an
    upright RGB ``photo``, with the evidence rows of its ``cfg.best_crops`` best-scored crops: the
    photo, boxes and person box prepared as the crop tool gives them to the model
    (``model.photo_spec``). One view: no mirrored one, as a person's taste may not be symmetric."""
    size = photo.size
    resized = model.photo_spec.resized_size(*size)
    image = photo_input(photo, model.photo_spec, resized).unsqueeze(0)
    crop_box = boxes_in_input(boxes, size, resized).unsqueeze(0)
    if human_box is None:
        person = crop_box.new_full((1, 1, 4), -1.0)
    else:
        scale_w, scale_h = resized[0] / size[0], resized[1] / size[1]
        person = rescale_boxes(torch.tensor([human_box], dtype=torch.float32), scale_w, scale_h).reshape(1, 1, 4)
    objective, features, _ = model.crop_outputs(image, crop_box, person)
    best = torch.from_numpy(best_crop_indices(scores, model.cfg.best_crops))
    evidence = model.preference.evidence(features, best)
    return UserImage(
        name, objective[None], features[None], torch.as_tensor(scores, dtype=torch.float32), evidence[None]
    )


def _open_photo(photo_dir: str, name: str) -> Image.Image:
    path = os.path.join(photo_dir, name)
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"photo {path} cannot be read: {error}") from None


def _read_rated(ratings_csv: str, photo_dir: str, user: str) -> dict[str, dict[str, list]]:
    """``user``'s ratings of ``ratings_csv``, checked against the photos; one ValueError otherwise."""
    try:
        ratings = read_ratings_csv(ratings_csv, photo_dir, user=user, min_crops=MIN_RATED_CROPS)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    except DatasetError as error:
        raise ValueError(str(error).replace("\n  ", " ")) from None
    rated = ratings[user]
    if len(rated) < MIN_RATED_PHOTOS:
        raise ValueError(
            f"{ratings_csv}: user {user} rated crops of {len(rated)} photo(s); personalizing needs at least "
            f"{MIN_RATED_PHOTOS}"
        )
    return rated


def personalize_model(
    model: Any,
    prior_users: Mapping[str, torch.Tensor],
    user: str,
    ratings_csv: str,
    photo_dir: str,
    out_path: str,
    score_mean: float,
    human_boxes: Mapping[str, Box | None] | None = None,
    progress: Progress | None = None,
) -> dict:
    """Fine-tune an embedding-variant prior ``model`` (``pic_model.PICModel``, its training users'
    embeddings ``prior_users``) to ``user``'s rows of ``ratings_csv`` and write the personal model
    atomically to ``out_path`` (``untils.pic_finetune``: ``cfg.finetune_steps`` steps over all the
    rated photos; with no photos to spare, the step is chosen on the same photos). Returns the
    summary ``pic_model.personalize_from_ratings`` documents."""
    start = time.perf_counter()
    cfg = model.cfg
    seed_everything(cfg.seed)
    _report(progress, 0.0, f"reading the ratings of {user}")
    rated = _read_rated(ratings_csv, photo_dir, user)
    human_boxes = human_boxes or {}
    model = model.cpu().eval().requires_grad_(False)
    examples: list[UserImage] = []
    with single_threaded():
        for index, (name, entry) in enumerate(sorted(rated.items())):
            photo = _open_photo(photo_dir, name)
            examples.append(
                rated_photo(
                    model,
                    photo,
                    name,
                    np.asarray(entry["bbox"], dtype=np.float64),
                    np.asarray(entry["score"], dtype=np.float64),
                    human_boxes.get(name),
                )
            )
            _report(progress, 0.4 * (index + 1) / len(rated), f"described the crops of {index + 1}/{len(rated)} photos")
        steps = cfg.finetune_steps

        def on_step(step: int) -> None:
            if step % max(1, steps // 10) == 0 or step == steps:
                _report(progress, 0.4 + 0.55 * step / steps, f"fine-tuning step {step}/{steps}")

        generator = torch.Generator().manual_seed(cfg.seed)
        result = finetune_user(model.preference, examples, examples, cfg, generator, score_mean, on_step)
    finetune = {"support": [example.name for example in examples], "val": [], "test": []}
    checkpoint = personal_checkpoint(model.state_dict(), cfg, user, result, prior_users, finetune)
    save_atomic(checkpoint, out_path)
    seconds = time.perf_counter() - start
    _report(progress, 1.0, f"personal model of {user} written")
    return {
        "user": user,
        "photos": len(examples),
        "ratings": sum(len(example.scores) for example in examples),
        "seconds": seconds,
        "variant": "embedding",
        "scope": cfg.finetune_scope,
        "step": result.step,
        "train_srcc": result.val_srcc,
        "path": out_path,
    }
