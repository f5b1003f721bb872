"""The crop library: photos in, ranked candidate crops out, for an already-loaded crop model
(``cropping_model.load_crop_model``); the model's ``photo_spec`` says how it wants its photos
(``untils.crop_photos`` prepares them). Every requested aspect ratio is ranked from one pass of the
model over the photo (the candidates of all ratios scored together).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from untils.batching import SizeBucketBatchSampler
from untils.candidates import DEFAULT_RATIO_CANDIDATES, ratio_candidate_grid
from untils.crop_candidates import FIXED_VIEW_COUNT, AspectRatios, describe_candidates, requested_ratios
from untils.crop_photos import PersonInfo, PhotoDataset, PhotoFailure, PhotoSettings, collate_photos
from untils.inference import move_batch, run_model
from untils.person_detection import PersonDetector
from untils.photos import DEFAULT_MAX_PIXELS, Box, PhotoError, PhotoLike
from untils.preprocessing import PhotoSpec
from untils.runtime import autocast_dtype

UNTRAINED_WARNING = "UNTRAINED MODEL (random weights): these crops are meaningless"
NO_USER_SCORE = "objective score (no --user: no user's preference added)"


class ModelNames(Protocol):
    """What a crop model's config names (every ``config_*.Config``): its kind and backbone."""

    @property
    def model_type(self) -> str: ...

    @property
    def backbone(self) -> str: ...


@runtime_checkable
class CropModel(Protocol):
    """A crop-scoring model as the library reads it (every model of cropping_model.py and pic_model.py):
    how it wants its photos and the config that names it."""

    @property
    def photo_spec(self) -> PhotoSpec: ...

    @property
    def cfg(self) -> ModelNames: ...


@runtime_checkable
class UserEmbeddingModel(Protocol):
    """A personalized model that scores as one of the users it knows (``pic_model.PICModel``)."""

    user_embeddings: dict[str, torch.Tensor]

    def embedding_of(self, user: str) -> torch.Tensor: ...


@runtime_checkable
class OfficialPICModel(Protocol):
    """PIC's released model (``pic_model.PICOfficialModel``): its fixed positions and where its
    checkpoint came from (``stage`` and the ``trained_user`` it was fine-tuned to; None: not recorded)."""

    num_positions: int
    stage: str | None
    trained_user: str | None


class NonFiniteScoresError(ValueError):
    """The model gave NaN or infinite scores (a checkpoint with non-finite weights, or an overflow)."""


@dataclass
class RatioResult:
    """The candidates of one requested aspect ratio, best first, in the upright photo's pixels.

    ``aspect_ratio`` is the ratio as given ("any", "16:9"), ``aspect_ratio_value`` its w/h (None:
    free); ``candidates`` says how they were chosen; ``note`` says why there is none (else None).
    """

    aspect_ratio: str
    aspect_ratio_value: float | None
    boxes: list[Box]
    scores: list[float]
    candidates: str
    note: str | None = None

    def top(self, k: int) -> list[tuple[Box, float]]:
        """The ``k`` best ``(box, score)`` pairs (fewer when there are fewer candidates)."""
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        return list(zip(self.boxes[:k], self.scores[:k], strict=True))

    def to_json(self, top_k: int, files: Sequence[str | None] | None = None) -> dict[str, Any]:
        """This ratio's entry of the JSON ``results``: its ``top_k`` crops (``files``: their file names,
        None where none was written) and every candidate ranked."""
        best = self.top(top_k)
        names = list(files) if files is not None else [None] * len(best)
        return {
            "aspect_ratio": self.aspect_ratio,
            "aspect_ratio_value": self.aspect_ratio_value,
            "candidates": self.candidates,
            "note": self.note,
            "crops": [
                {
                    "rank": rank,
                    "file": name,
                    "box": list(box),
                    "score": score,
                    "width": box[2] - box[0],
                    "height": box[3] - box[1],
                }
                for rank, ((box, score), name) in enumerate(zip(best, names, strict=False), start=1)
            ],
            "ranked": [{"box": list(box), "score": score} for box, score in zip(self.boxes, self.scores, strict=True)],
        }


@dataclass
class CropResult:
    """One photo's ranked candidates: ``results`` has one :class:`RatioResult` per requested ratio, in
    the order asked; ``top``, ``boxes`` and ``scores`` are the first ratio's. ``ratio_candidates``
    is the fixed-ratio grid used (``fast`` or ``dense``, ``untils.candidates.RATIO_CANDIDATE_GRIDS``)."""

    index: int
    name: str
    width: int
    height: int
    results: list[RatioResult]
    person: PersonInfo
    resized_size: tuple[int, int]
    exif_orientation: int
    heat_map: np.ndarray | None = None  # (64, 64) in [0, 1] over the whole photo (human-centric model)
    image: Image.Image | None = None  # the upright photo, when asked for (keep_image)
    image_format: str | None = None
    ratio_candidates: str = DEFAULT_RATIO_CANDIDATES

    @property
    def boxes(self) -> list[Box]:
        return self.results[0].boxes

    @property
    def scores(self) -> list[float]:
        return self.results[0].scores

    def top(self, k: int) -> list[tuple[Box, float]]:
        """The first ratio's ``k`` best ``(box, score)`` pairs."""
        return self.results[0].top(k)

    def to_json(self, top_k: int, files: Sequence[Sequence[str | None] | None] | None = None) -> list[dict]:
        """The JSON ``results``: one entry per ratio (see :meth:`RatioResult.to_json`)."""
        names = list(files) if files is not None else [None] * len(self.results)
        return [result.to_json(top_k, ratio_files) for result, ratio_files in zip(self.results, names, strict=True)]


# ----------------------------------------------------------------------------------------------
# The cropper
# ----------------------------------------------------------------------------------------------

OFFICIAL_PIC_SCORE = "objective score + its position's offset from this photo's user logits (the release's score)"


def official_pic_scoring(model: OfficialPICModel, checkpoint: str, user: str | None) -> tuple[bool, str]:
    """How an official PIC model scores: ``(with its position offsets, the JSON's scored_as)``.
    ``user`` must be the one its fine-tuned checkpoint records (``model.trained_user``, finetune_PIC.py):
    a prior (or the release's file) holds no per-user state, each photo's own user logits give its
    offsets; a pre-trained one (``model.stage``) scores by its objective score alone."""
    stage, trained_for = model.stage, model.trained_user
    what = {
        "finetuned": f"the official PIC model fine-tuned to user {trained_for}",
        "prior": "the official PIC prior model, which holds no per-user state",
        "pretrain": "an official PIC pre-trained model, whose position offsets are not trained",
    }.get(stage or "", "a state_dict of PIC's release, which records no user")
    if user is not None and (stage != "finetuned" or user != trained_for):
        raise ValueError(
            f"--user {user}: {checkpoint} is {what}; crop for {user} with their fine-tuned checkpoint "
            f"(users/{user}.pth of finetune_PIC.py)"
        )
    if stage == "pretrain":
        warnings.warn(f"{checkpoint} is {what}: crops are ranked by its objective score alone", stacklevel=3)
        return False, f"objective score ({what})"
    if model.num_positions != FIXED_VIEW_COUNT:
        raise ValueError(
            f"{checkpoint}: its {model.num_positions} position offsets do not fit the {FIXED_VIEW_COUNT} "
            "fixed views crop.py scores (untils.pic_format.fixed_views)"
        )
    if user is None:
        warnings.warn(
            f"{checkpoint} is {what}, used without --user: crops are ranked by its {OFFICIAL_PIC_SCORE}", stacklevel=3
        )
    return True, f"{'user ' + user + ': ' if user else ''}{OFFICIAL_PIC_SCORE}; {what}"


class Cropper:
    """Rank candidate crops of photos with a loaded crop-scoring model (eval mode, on its device).

    ``Cropper(load_crop_model("best.pth")).crop("photo.jpg", top_k=3)`` gives
    ``[((x1, y1, x2, y2), score), ...]``. The model's ``photo_spec`` says how photos are prepared and
    which candidates it ranks; ``model.cfg`` names it. ``user`` scores as one of a personalized
    model's users. ``checkpoint`` (its file, for the outputs and messages) and ``untrained`` (random
    weights: its crops mean nothing, said in every output) describe where the model came from.
    ``detector`` finds the person when none is given (see ``untils.person_detection``). ``precision``
    (fp32, bf16, fp16) autocasts the forward pass; ``channels_last`` runs the model channels-last
    (both faster on GPUs). ``ratio_candidates`` (``fast`` or ``dense``) picks the grid of crops a fixed
    aspect ratio ranks (``untils.candidates.RATIO_CANDIDATE_GRIDS``; the free ratio's GAIC grid is the
    same in both).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        checkpoint: str | None = None,
        untrained: bool = False,
        detector: PersonDetector | None = None,
        user: str | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        ratio_candidates: str = DEFAULT_RATIO_CANDIDATES,
    ) -> None:
        if not isinstance(model, CropModel):
            raise TypeError(f"{type(model).__name__} is not a crop model: it has no photo_spec and cfg")
        self.model = model
        self.device = next(model.parameters()).device
        self.spec = model.photo_spec
        self.cfg = model.cfg
        self.model_type = self.cfg.model_type
        self.precision = precision
        self.autocast_dtype = autocast_dtype(precision)
        self.channels_last = channels_last
        ratio_candidate_grid(ratio_candidates)  # refuses an unknown grid
        self.ratio_candidates = ratio_candidates
        self.checkpoint = checkpoint
        self.untrained = untrained
        self.user = user
        if untrained:
            warnings.warn(UNTRAINED_WARNING, stacklevel=2)
        self.user_image, self.scored_as = False, None
        if self.spec.takes_user_image:
            if not isinstance(model, OfficialPICModel):
                raise TypeError(f"{type(model).__name__} takes a user image but is not PIC's released model")
            self.user_image, self.scored_as = official_pic_scoring(model, str(checkpoint), user)
        elif self.spec.takes_user:
            if not isinstance(model, UserEmbeddingModel):
                raise TypeError(f"{type(model).__name__} takes a user but has no user embeddings")
            known = ", ".join(sorted(model.user_embeddings)) or "none"
            if user is not None:
                try:
                    model.embedding_of(user)
                except KeyError:
                    raise ValueError(f"--user {user}: {checkpoint} knows no such user (known users: {known})") from None
            self.scored_as = f"user {user}" if user is not None else NO_USER_SCORE
            if user is None:  # say so: without a user the scores are nobody's taste
                warnings.warn(
                    f"{checkpoint} is a personalized (PIC) checkpoint used without --user: crops are ranked "
                    f"by its {NO_USER_SCORE}; --user ID ranks them as one of its users ({known})",
                    stacklevel=2,
                )
        elif user is not None:
            raise ValueError(
                f"--user {user}: {checkpoint} is not a personalized (PIC) checkpoint; "
                "train one with prior_PIC.py / finetune_PIC.py"
            )
        self.detector = detector
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def describe(self) -> dict[str, Any]:
        """The model, for the JSON outputs."""
        entry = {
            "checkpoint": self.checkpoint,
            "model_type": self.model_type,
            "user": self.user,
            "backbone": self.cfg.backbone,
            "image_size": list(self.spec.image_size),
            "keep_aspect_ratio": self.spec.keep_aspect_ratio,
            "channel_order": self.spec.channel_order,
            "untrained": self.untrained,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "ratio_candidates": self.ratio_candidates,
        }
        if self.scored_as is not None:
            entry["scored_as"] = self.scored_as
        if self.untrained:
            entry["warning"] = UNTRAINED_WARNING
        return entry

    def candidates(self, aspect_ratio: None | str | float = None) -> str:
        """How this model's candidates are chosen at ``aspect_ratio`` (``untils.crop_candidates``);
        raises ValueError for a ratio they cannot give (any, for an official PIC model)."""
        ((_, value),) = requested_ratios(aspect_ratio)
        return describe_candidates(self.spec.candidates, value, self.ratio_candidates)

    def rank_many(
        self,
        photos: Sequence[PhotoLike],
        human_boxes: Sequence[Sequence[float] | None] | None = None,
        aspect_ratios: AspectRatios = ("any",),
        *,
        keep_person: bool = False,
        human_source: str = "given",
        batch_size: int = 4,
        num_workers: int = 0,
        keep_image: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Iterator[CropResult | PhotoFailure]:
        """Rank the candidates of many photos; yields one result or failure per photo, as they finish.

        ``aspect_ratios``: one ratio ("any", "16:9", a number w/h) or several; each photo is decoded,
        its person found and the model run once for all of them, and its result has one entry per
        ratio in that order. ``keep_person`` keeps only candidates containing the person's whole box
        (and every detected face); a ratio with none says so in its ``note``.
        Photos are decoded (and people detected) in ``num_workers`` DataLoader workers and
        scored ``batch_size`` at a time, photos of one resized size together, so the order is
        not the input order: use each result's ``index``. ``human_boxes`` (one per photo, None
        for none) are in upright-photo pixels; ``keep_image`` returns the upright photo too.
        Files over ``max_pixels`` pixels fail without being decoded. Raises
        :class:`NonFiniteScoresError` when the model scores NaN or infinity.
        """
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        if human_boxes is None:
            human_boxes = [None] * len(photos)
        if len(human_boxes) != len(photos):
            raise ValueError(f"got {len(human_boxes)} person boxes for {len(photos)} photos")
        ratios = requested_ratios(aspect_ratios)
        descriptions = [  # refuses bad ones
            describe_candidates(self.spec.candidates, value, self.ratio_candidates) for _, value in ratios
        ]
        settings = PhotoSettings(
            self.spec,
            tuple(value for _, value in ratios),
            keep_image,
            max_pixels,
            self.user_image,
            keep_person,
            self.ratio_candidates,
        )
        dataset = PhotoDataset(photos, human_boxes, human_source, self.detector, settings)
        yield from dataset.failures
        if len(dataset) == 0:
            return
        loader = DataLoader(
            dataset,
            batch_sampler=SizeBucketBatchSampler(dataset, batch_size, shuffle=False),
            collate_fn=collate_photos,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for batch, failures in loader:
            yield from failures
            if batch is not None:
                yield from self._score(batch, ratios, descriptions)

    @torch.inference_mode()
    def _score(
        self, batch: dict[str, Any], ratios: list[tuple[str, float | None]], descriptions: list[str]
    ) -> list[CropResult]:
        output = run_model(
            self.model,
            move_batch(batch, self.device),
            self.autocast_dtype,
            self.channels_last,
            self.user if self.spec.takes_user else None,
        )
        results = []
        scores = output.score.float().cpu()  # one device-to-host copy per batch
        heat_maps = output.heat_map[:, 0].float().cpu() if output.heat_map is not None else None
        if not (
            bool(torch.isfinite(scores[batch["crop_valid"]]).all())
            and (heat_maps is None or bool(torch.isfinite(heat_maps).all()))
        ):
            raise NonFiniteScoresError(
                f"{self.checkpoint or 'the model'}: the model gives non-finite scores (NaN or "
                "infinity): its weights are broken (a diverged training?); no crop written"
            )
        for row, record in enumerate(batch["photo"]):
            photo_scores = scores[row]
            ranked = []
            for (text, value), description, candidates, scored, note in zip(
                ratios, descriptions, record.candidates, record.scored, record.notes, strict=True
            ):
                ratio_scores = photo_scores[torch.from_numpy(scored)]
                order = torch.argsort(ratio_scores, descending=True, stable=True).numpy()
                boxes: list[Box] = [(int(c[0]), int(c[1]), int(c[2]), int(c[3])) for c in candidates[order]]
                ranked.append(
                    RatioResult(text, value, boxes, [float(ratio_scores[i]) for i in order], description, note)
                )
            heat_map = heat_maps[row].numpy() if heat_maps is not None else None
            results.append(
                CropResult(
                    index=record.index,
                    name=record.name,
                    width=record.width,
                    height=record.height,
                    results=ranked,
                    person=record.person,
                    resized_size=record.resized_size,
                    exif_orientation=record.exif_orientation,
                    heat_map=heat_map,
                    image=record.image,
                    image_format=record.image_format,
                    ratio_candidates=self.ratio_candidates,
                )
            )
        return results

    def rank(
        self,
        image: PhotoLike,
        human_box: Sequence[float] | None = None,
        aspect_ratios: AspectRatios = ("any",),
        keep_person: bool = False,
    ) -> CropResult:
        """Every candidate of one photo, ranked per ratio; raises :class:`PhotoError` if it cannot be cropped."""
        (result,) = self.rank_many([image], [human_box], aspect_ratios, keep_person=keep_person)
        if isinstance(result, PhotoFailure):
            raise PhotoError(f"{result.name}: {result.message}")
        return result

    def crop(
        self,
        image: PhotoLike,
        human_box: Sequence[float] | None = None,
        aspect_ratios: AspectRatios = ("any",),
        top_k: int = 1,
        keep_person: bool = False,
    ) -> list[tuple[Box, float]]:
        """The ``top_k`` best ``((x1, y1, x2, y2), score)`` of a photo (path, PIL image or uint8 array), at
        the first of ``aspect_ratios``."""
        return self.rank(image, human_box, aspect_ratios, keep_person).top(top_k)

    def crop_many(
        self,
        images: Sequence[PhotoLike],
        human_boxes: Sequence[Sequence[float] | None] | None = None,
        aspect_ratios: AspectRatios = ("any",),
        top_k: int = 1,
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> list[list[tuple[Box, float]]]:
        """:meth:`crop` for many photos, batched, in input order; raises naming every photo that failed."""
        ranked: dict[int, list[tuple[Box, float]]] = {}
        failures = []
        for result in self.rank_many(
            images, human_boxes, aspect_ratios, batch_size=batch_size, num_workers=num_workers
        ):
            if isinstance(result, PhotoFailure):
                failures.append(f"{result.name}: {result.message}")
            else:
                ranked[result.index] = result.top(top_k)
        if failures:
            raise PhotoError(f"{len(failures)} of {len(images)} photos failed:\n  " + "\n  ".join(failures))
        return [ranked[index] for index in range(len(images))]
