"""This project's PIC variant (``--variant embedding``): set-encoder user embedding, episodic prior.

Not the published method (that is ``pic_model.PICOfficialModel``, the default ``--variant
official``): an extension of this project that keeps PIC's outline (objective + subjective
branches, a prior, few-shot fine-tuning). One backbone feeds two branches: the objective branch is
GAIC's head on RoI+RoD features (the generic model), the subjective branch describes crops so that
users can be told apart (trained by classifying which user chose a crop). The preference module
embeds a user from the subjective features of the user's best crops and adds a user-specific
preference to the objective score. Explicit crop geometry (the crop in the image, and the person in
the crop) feeds both the subjective branch and the preference module.

The prior and fine-tuning stages train only the preference module, on what the frozen model says
about each rated image's crops (:func:`extract_features`, :class:`UserImage`, end of this file).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from config_PIC import Config
from cropping_model import ALIGN_SIZE, CropOutput, GAICModel, boxes_with_batch_index, scatter_valid_scores
from pic_dataset import PICData, PICImageDataset, best_crop_indices
from untils.batching import evaluation_loader
from untils.boxes import flip_boxes_horizontal
from untils.checkpoint import CheckpointError, config_from_checkpoint, load_model_weights
from untils.inference import move_batch
from untils.metrics import gaicd_metrics, weighted_accuracy

GEOMETRY_DIM = 16
SUBJECTIVE_HIDDEN = 128


def crop_geometry(crop_box: torch.Tensor, human_box: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Geometry of crops (..., 4) in a ``width`` x ``height`` image -> (..., GEOMETRY_DIM).

    ``human_box`` broadcasts against ``crop_box``; a box with x1 < 0 (or no area) means no person.
    Columns: x1/W, y1/H, x2/W, y2/H, w/W, h/H, area share, log(w/h), has person, then with a person
    (zeros without): its centre in the crop (u, v in crop widths/heights), the gap above it and
    below it (crop heights), its height and width relative to the crop's, and the share of its box
    inside the crop.
    """
    crop = crop_box.float()
    person = human_box.float().expand_as(crop)
    x1, y1, x2, y2 = crop.unbind(-1)
    px1, py1, px2, py2 = person.unbind(-1)
    crop_w, crop_h = (x2 - x1).clamp(min=1e-6), (y2 - y1).clamp(min=1e-6)
    present = ((px1 >= 0) & (px2 > px1) & (py2 > py1)).to(crop.dtype)
    person_w, person_h = (px2 - px1).clamp(min=1e-6), (py2 - py1).clamp(min=1e-6)
    overlap = ((torch.minimum(x2, px2) - torch.maximum(x1, px1)).clamp(min=0)
               * (torch.minimum(y2, py2) - torch.maximum(y1, py1)).clamp(min=0))
    columns = [x1 / width, y1 / height, x2 / width, y2 / height, crop_w / width, crop_h / height,
               crop_w * crop_h / (width * height), torch.log(crop_w / crop_h), present]
    person_columns = [((px1 + px2) / 2 - x1) / crop_w, ((py1 + py2) / 2 - y1) / crop_h, (py1 - y1) / crop_h,
                      (y2 - py2) / crop_h, person_h / crop_h, person_w / crop_w, overlap / (person_w * person_h)]
    columns += [column * present for column in person_columns]
    return torch.stack(columns, dim=-1)


class SubjectiveBranch(nn.Module):
    """Subjective feature of a crop: its aligned RoI+RoD feature fused with its geometry."""

    def __init__(self, align_dim: int, out_dim: int, align_size: int = ALIGN_SIZE) -> None:
        super().__init__()
        self.content = nn.Sequential(nn.Conv2d(align_dim, SUBJECTIVE_HIDDEN, kernel_size=align_size),
                                     nn.ReLU(inplace=True), nn.Flatten(1))
        self.fuse = nn.Sequential(nn.Linear(SUBJECTIVE_HIDDEN + GEOMETRY_DIM, out_dim), nn.ReLU(inplace=True))

    def forward(self, aligned: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.content(aligned), geometry], dim=1))


class PreferenceModule(nn.Module):
    """The individual preference module: embeds a user, and scores crops for an embedding.

    A crop is described by ``[subjective feature, geometry]`` (``feature_dim`` values), standardised
    with statistics of training crops (``set_feature_statistics``). Evidence about a user is one
    row per best crop of an image the user rated: the crop's description and its difference from
    the mean description of that image's candidates. The embedding is a set function of the
    evidence (an MLP, averaged over rows, then a linear map), so a new user is embedded from a few
    rated images. The preference for a crop is the dot product of its taste features (an MLP of
    its description) with the weights the embedding selects, over sqrt(taste_dim).
    """

    def __init__(self, feature_dim: int, embed_dim: int = 16, taste_dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.evidence_encoder = nn.Sequential(nn.Linear(2 * feature_dim, hidden), nn.ReLU(inplace=True),
                                              nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.embedding_head = nn.Linear(hidden, embed_dim)
        self.taste = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, taste_dim))
        self.user_weights = nn.Linear(embed_dim, taste_dim)
        self.taste_dim = taste_dim

    def set_feature_statistics(self, features: torch.Tensor) -> None:
        """Standardise descriptions with the mean and std of ``features`` (K, feature_dim)."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp(min=1e-3))

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std

    def evidence(self, features: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
        """Evidence rows (len(best), 2 * feature_dim) from one image's crops (N, F) and its best crops' indices."""
        described = self.normalise(features)
        chosen = described[best]
        return torch.cat([chosen, chosen - described.mean(dim=0)], dim=1)

    def embed(self, evidence: torch.Tensor) -> torch.Tensor:
        """A user's embedding (embed_dim,) from evidence rows (M, 2 * feature_dim) of any number of images."""
        if evidence.dim() != 2 or evidence.shape[0] == 0:
            raise ValueError(f"evidence of shape {tuple(evidence.shape)}: expected (M >= 1, features)")
        return self.embedding_head(self.evidence_encoder(evidence).mean(dim=0))

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Preference (...) of crops (..., feature_dim) for a user's embedding (embed_dim,)."""
        weights = self.user_weights(embedding)
        return (self.taste(self.normalise(features)) * weights).sum(dim=-1) / math.sqrt(self.taste_dim)


class PICModel(GAICModel):
    """Personalized cropping: GAIC's scorer (objective branch) + subjective branch + preference module.

    Called like every crop model, ``model(image, crop_box, human_box=None, crop_valid=None)`` ->
    :class:`CropOutput`: the objective (generic) scores, or, once a user is selected
    (``model.user = "name"``, one of ``user_embeddings``, which :func:`load_pic_model` fills from
    a checkpoint), the objective score plus that user's preference. ``cfg.num_users`` > 0 adds the
    user classifier that pre-training trains the subjective branch with.
    """

    def __init__(self, cfg=None, loadweights: Optional[bool] = None) -> None:
        if cfg is None:
            from config_PIC import cfg
        super().__init__(cfg, loadweights)
        align_dim = cfg.reduced_dim * (2 if cfg.use_rod_feature else 1)
        self.subjective_branch = SubjectiveBranch(align_dim, cfg.subjective_dim)
        self.user_classifier = nn.Linear(cfg.subjective_dim, cfg.num_users) if cfg.num_users else None
        self.preference = PreferenceModule(cfg.subjective_dim + GEOMETRY_DIM, cfg.embed_dim, cfg.taste_dim,
                                           cfg.preference_hidden)
        self.user_embeddings: dict[str, torch.Tensor] = {}
        self._user: Optional[str] = None

    @property
    def user(self) -> Optional[str]:
        """The user whose preference ``forward`` adds (None: objective scores only)."""
        return self._user

    @user.setter
    def user(self, name: Optional[str]) -> None:
        if name is not None:
            self.embedding_of(name)  # a KeyError naming the known users
        self._user = name

    def forward(self, image: torch.Tensor, crop_box: torch.Tensor, human_box: Optional[torch.Tensor] = None,
                crop_valid: Optional[torch.Tensor] = None) -> CropOutput:
        """Scores (B, N) of crops ``crop_box`` (B, N, 4, input pixels); padded crops score ``-inf``.

        With a user selected, ``human_box`` (B, 1, 4) feeds the crops' geometry; None means no person.
        """
        if self.user is None:
            return super().forward(image, crop_box, human_box, crop_valid)
        if human_box is None:
            human_box = crop_box.new_full((crop_box.shape[0], 1, 4), -1.0)
        objective, features, _ = self.crop_outputs(image, crop_box, human_box, crop_valid)
        preference = self.preference(features, self.embedding_of(self.user).to(features))
        return CropOutput(scatter_valid_scores(objective + preference, crop_valid, *crop_box.shape[:2]))

    def describe_crops(self, feature_map: torch.Tensor, rois: torch.Tensor, human_boxes: torch.Tensor,
                       width: float, height: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective scores (K,) and descriptions (K, subjective_dim + GEOMETRY_DIM) of rois (K, 5)."""
        aligned = self.crop_align(feature_map, rois)
        geometry = crop_geometry(rois[:, 1:], human_boxes, width, height)
        subjective = self.subjective_branch(aligned, geometry)
        return self.FC_layers(aligned).flatten(), torch.cat([subjective, geometry], dim=1)

    def crop_outputs(self, image: torch.Tensor, crop_box: torch.Tensor, human_box: torch.Tensor,
                     crop_valid: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(objective (K,), descriptions (K, F), image index (K,))`` of the valid crops of a batch.

        ``crop_box`` (B, N, 4) and ``human_box`` (B, 1, 4) are in input pixels.
        """
        batch, count = crop_box.shape[:2]
        rois = boxes_with_batch_index(crop_box)
        human = human_box.reshape(batch, 1, 4).expand(batch, count, 4).reshape(-1, 4)
        if crop_valid is not None:
            keep = crop_valid.reshape(-1)
            rois, human = rois[keep], human[keep]
        height, width = image.shape[-2:]
        objective, features = self.describe_crops(self.reduced_features(image), rois, human, width, height)
        return objective, features, rois[:, 0].long()

    def _user_logits(self, feature_map: torch.Tensor, rois: torch.Tensor, human_boxes: torch.Tensor,
                     width: float, height: float) -> torch.Tensor:
        if self.user_classifier is None:
            raise ValueError("this PIC model has no user classifier (built with num_users=0)")
        geometry = crop_geometry(rois[:, 1:], human_boxes, width, height)
        return self.user_classifier(self.subjective_branch(self.crop_align(feature_map, rois), geometry))

    def user_logits(self, image: torch.Tensor, rois: torch.Tensor, human_boxes: torch.Tensor) -> torch.Tensor:
        """Logits (M, num_users) of which training user chose each crop ``rois`` (M, 5), with the
        person box (M, 4) of its image."""
        height, width = image.shape[-2:]
        return self._user_logits(self.reduced_features(image), rois, human_boxes, width, height)

    def pretraining_outputs(self, image: torch.Tensor, crop_box: torch.Tensor, crop_valid: Optional[torch.Tensor],
                            best_rois: torch.Tensor, best_human: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass for both branches: objective scores (B, N) of the candidates, and
        :meth:`user_logits` of the users' best crops ``best_rois``."""
        batch, count = crop_box.shape[:2]
        feature_map = self.reduced_features(image)
        rois = boxes_with_batch_index(crop_box)
        if crop_valid is not None:
            rois = rois[crop_valid.reshape(-1)]
        objective = self.FC_layers(self.crop_align(feature_map, rois)).flatten()
        height, width = image.shape[-2:]
        logits = self._user_logits(feature_map, best_rois, best_human, width, height)
        return scatter_valid_scores(objective, crop_valid, batch, count), logits

    def embedding_of(self, user: str) -> torch.Tensor:
        if user not in self.user_embeddings:
            known = ", ".join(sorted(self.user_embeddings)) or "none"
            raise KeyError(f"no embedding for user {user!r} in this PIC model (known users: {known})")
        return self.user_embeddings[user]


def prior_pull_loss(current: Sequence[torch.Tensor], prior: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean squared distance of fine-tuned tensors from their prior values, summed over tensors."""
    return sum(torch.mean((now - before.detach()) ** 2) for now, before in zip(current, prior))


def load_embedding_model(content: dict, device: torch.device | str = "cpu",
                         overrides: Optional[dict] = None) -> PICModel:
    """The embedding variant (eval mode, on ``device``) from the content of a pretrain_PIC.py,
    prior_PIC.py or finetune_PIC.py checkpoint of that variant (``pic_model.load_pic_model`` calls it).

    Its ``user_embeddings`` hold every user the checkpoint knows: the prior's training users, or
    the fine-tuned user (and the prior's); select one with ``model.user = name``.
    """
    if content.get("model_type") != "PIC":
        raise CheckpointError(f"checkpoint is not a PIC checkpoint (model_type={content.get('model_type')!r})")
    model = PICModel(config_from_checkpoint(content, Config, overrides), loadweights=False)
    load_model_weights(model, content)
    model.user_embeddings = {user: torch.as_tensor(vector, dtype=torch.float32)
                             for user, vector in content.get("user_embeddings", {}).items()}
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# The preference module's data: what the frozen model says about each rated image's crops
# ----------------------------------------------------------------------------------------------

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
    for batch in tqdm(evaluation_loader(dataset, images_per_batch, num_workers), desc="crop features",
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
    """GAICD metrics (Acc_K/N, SRCC, PCC) and mean wAcc_K/5, wAcc_K/10 of a user's images, scored as :func:`user_scores` (view 0)."""
    targets = [example.scores for example in examples]
    predictions = [user_scores(preference, embedding, example) for example in examples]
    wacc5, wacc10 = weighted_accuracy(targets, predictions)
    return {**gaicd_metrics(targets, predictions), "wacc5": float(np.mean(wacc5)), "wacc10": float(np.mean(wacc10))}
