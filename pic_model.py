"""Personalized image cropping (PIC): the published model (:class:`PICOfficialModel`, Cooperxjt/PIC,
parameter names the release's) and this project's embedding variant (:class:`PICModel`), their
building blocks and the embedding variant's losses and data. README.md (PIC section) describes both;
:func:`pic_model_from_checkpoint` builds them from our checkpoints (``cropping_model.load_crop_model``
loads every kind); the release's recipe is ``untils.pic_recipe``, the embedding variant's feature
cache ``untils.pic_features``, its fine-tuning ``untils.pic_finetune``. A person's own ratings
become their personal model through :func:`personalize_from_ratings`; :func:`load_pic_ranker`
ranks a photo's candidates with a prior or personal model (``untils.pic_personalize``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

import config_PIC
from config_GAICD import MOS_MEAN
from pic_dataset import PICData, PICImageDataset
from rod_align import CropAlignFeatures
from untils.backbones import BACKBONE_CHANNELS, GAICBackbone
from untils.boxes import FEATURE_STRIDE
from untils.checkpoint import (
    CheckpointError,
    config_from_checkpoint,
    load_model_weights,
    read_checkpoint,
    release_state_dict,
)
from untils.crop_heads import (
    ALIGN_SIZE,
    CropOutput,
    GAICScorer,
    boxes_with_batch_index,
    check_crop_box,
    mask_padded_scores,
    release_scales,
    scatter_valid_scores,
)
from untils.dual_attention import DualAttention
from untils.pic_checks import best_crop_indices
from untils.pic_features import VIEWS, ImageFeatures, UserImage
from untils.pic_format import USER_ID_PATTERN
from untils.pic_personalize import MIN_RATED_CROPS as MIN_RATED_CROPS  # the personalization interface
from untils.pic_personalize import MIN_RATED_PHOTOS as MIN_RATED_PHOTOS
from untils.pic_personalize import PERSONALIZATION_OPTIONS, Box, Progress, personalize_model
from untils.pic_personalize import PICRanker as PICRanker
from untils.preprocessing import GAIC_SHORT_SIDE, PhotoSpec, spec_of_config

RELEASE_NUM_USERS = 945  # the release's training users and CPC's views per image (its hard-wired sizes)
RELEASE_NUM_POSITIONS = 24
GEOMETRY_DIM = 16  # crop_geometry's columns
SUBJECTIVE_HIDDEN = 128
POSITION_HEADS = ("linear", "conv1d")
CONV1D_KERNEL, CONV1D_STRIDE = 40, 39  # the release's fine-tuning FC_layers_3: 945 logits -> 24 offsets


def conv1d_positions(num_users: int) -> int:
    """Offsets the release's Conv1d position head gives from ``num_users`` logits."""
    return (num_users - CONV1D_KERNEL) // CONV1D_STRIDE + 1 if num_users >= CONV1D_KERNEL else 0


# ----------------------------------------------------------------------------------------------
# The official model
# ----------------------------------------------------------------------------------------------


def pic_fc_layers(in_dim: int, out_dim: int, align_size: int, pooled: bool) -> nn.Sequential:
    """The release's ``fc_layers_1`` (``pooled=False``, one score per crop) and ``fc_layers_2``
    (``pooled=True``, ``out_dim`` user logits averaged over positions): conv align x align -> 768,
    BatchNorm, ReLU; 1x1 -> 128, BatchNorm, ReLU; dropout 0.5; 1x1 -> out_dim."""
    layers = [
        nn.Sequential(nn.Conv2d(in_dim, 768, kernel_size=align_size), nn.BatchNorm2d(768), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(768, 128, kernel_size=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True)),
        nn.Dropout(p=0.5),
        nn.Conv2d(128, out_dim, kernel_size=1),
    ]
    if pooled:
        layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()]
    return nn.Sequential(*layers)


class PICOfficialModel(nn.Module):
    """The release's prior/fine-tuning model (``persionality_crop_model_multi_scale_shared`` and its
    ``_attention`` twin, ``models/prior_model.py`` and ``models/finetune_model.py``).

    ``forward(image, crop_box, human_box=None, crop_valid=None, user_image=None)``: ``image``
    (B, 3, H, W) prepared by :func:`untils.pic_format.pic_crop_image`, ``crop_box`` (B, N, 4) in its
    pixels, ``user_image`` (B, 3, 256, 256) prepared by :func:`untils.pic_format.pic_user_image` (the
    same photo: the subjective branch describes its content). Without ``user_image`` the score is the objective
    (generic) score; with it, N must be ``num_positions`` (the candidates in their fixed order) and
    each crop gets its position's offset. Padded crops (``crop_valid`` False) score ``-inf``;
    ``human_box`` is accepted, like every crop model here, and not used.

    ``position_head`` is how the user logits become the offsets, ``FC_layers_3``: ``linear``
    (``Sequential(Linear(num_users, num_positions))``) or ``conv1d`` (``Conv1d(1, 1, 40, stride 39)``
    sliding over the logits: 24 offsets from 945 users), the release using either in either class.
    ``attention`` puts :class:`untils.dual_attention.DualAttention` (``danet``) before ``DimRed`` on
    the subjective branch only.

    ``cfg`` (a ``config_PIC.Config``), ``stage`` and ``trained_user`` (the user a fine-tuned
    checkpoint was trained for) are set by :func:`build_official_model` and the loader.
    """

    def __init__(
        self,
        backbone: str = "mobilenetv2",
        reduced_dim: int = 8,
        align_size: int = 9,
        num_users: int = RELEASE_NUM_USERS,
        num_positions: int = RELEASE_NUM_POSITIONS,
        attention: bool = False,
        backbone_weight_path: str | None = None,
        position_head: str = "linear",
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.num_users, self.num_positions = num_users, num_positions
        self.Feat_ext = GAICBackbone(backbone, backbone_weight_path)
        channels = sum(self.Feat_ext.channels)
        self.danet = DualAttention(channels) if attention else None
        self.DimRed = nn.Conv2d(channels, reduced_dim, kernel_size=1)
        self.crop_align = CropAlignFeatures(align_size, 1.0 / FEATURE_STRIDE)
        self.FC_layers_1 = pic_fc_layers(2 * reduced_dim, 1, align_size, pooled=False)
        self.FC_layers_2 = pic_fc_layers(reduced_dim, num_users, align_size, pooled=True)
        self.FC_layers_3: nn.Module
        if position_head == "linear":
            self.FC_layers_3 = nn.Sequential(nn.Linear(num_users, num_positions))
        elif position_head == "conv1d":
            if conv1d_positions(num_users) != num_positions:
                raise ValueError(
                    f"the Conv1d position head gives {conv1d_positions(num_users)} offsets from "
                    f"{num_users} users, not {num_positions}"
                )
            self.FC_layers_3 = nn.Conv1d(1, 1, kernel_size=CONV1D_KERNEL, stride=CONV1D_STRIDE)
        else:
            raise ValueError(f"position_head {position_head!r}: expected one of {', '.join(POSITION_HEADS)}")
        self.position_head = position_head
        self.cfg: Any = None  # a config_PIC.Config, set by build_official_model and the loader
        self.stage: str | None = None
        self.trained_user: str | None = None

    @property
    def photo_spec(self) -> PhotoSpec:
        """GAIC's release input (channels in the order its checkpoint was trained on), the fixed
        views, and the whole photo for the subjective branch."""
        return PhotoSpec(
            "gaic",
            (GAIC_SHORT_SIDE, GAIC_SHORT_SIDE),
            True,
            "pic",
            takes_user_image=True,
            channel_order=getattr(self.cfg, "channel_order", "rgb"),
        )

    def objective_scores(self, image: torch.Tensor, crop_box: torch.Tensor) -> torch.Tensor:
        """(B, N) generic scores of crops (B, N, 4)."""
        batch = image.shape[0]
        check_crop_box(crop_box, batch)
        feature_map = self.DimRed(release_scales(*self.Feat_ext(image)))
        aligned = self.crop_align(feature_map, boxes_with_batch_index(crop_box.to(image.dtype)))
        return self.FC_layers_1(aligned).reshape(batch, crop_box.shape[1])

    def user_logits(self, user_image: torch.Tensor) -> torch.Tensor:
        """(B, num_users) logits of which training user the photos (B, 3, 256, 256) belong to."""
        features = release_scales(*self.Feat_ext(user_image))
        if self.danet is not None:
            features = self.danet(features)
        return self.FC_layers_2(self.DimRed(features))

    def position_offsets(self, user_image: torch.Tensor) -> torch.Tensor:
        """(B, num_positions) personal offsets of the candidate positions."""
        logits = self.user_logits(user_image)
        if self.position_head == "conv1d":  # one channel sliding over the logits, image by image
            return self.FC_layers_3(logits.unsqueeze(1)).squeeze(1)
        return self.FC_layers_3(logits)

    def forward(
        self,
        image: torch.Tensor,
        crop_box: torch.Tensor,
        human_box: torch.Tensor | None = None,
        crop_valid: torch.Tensor | None = None,
        user_image: torch.Tensor | None = None,
    ) -> CropOutput:
        scores = self.objective_scores(image, crop_box)
        if user_image is not None:
            if crop_box.shape[1] != self.num_positions:
                raise ValueError(
                    f"{crop_box.shape[1]} crops per image: the personal offsets need exactly "
                    f"{self.num_positions} candidates in their fixed order"
                )
            scores = scores + self.position_offsets(user_image)
        return CropOutput(mask_padded_scores(scores, crop_valid))


# ----------------------------------------------------------------------------------------------
# The embedding variant (this project's extension): its model
# ----------------------------------------------------------------------------------------------


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
    overlap = (torch.minimum(x2, px2) - torch.maximum(x1, px1)).clamp(min=0) * (
        torch.minimum(y2, py2) - torch.maximum(y1, py1)
    ).clamp(min=0)
    columns = [
        x1 / width,
        y1 / height,
        x2 / width,
        y2 / height,
        crop_w / width,
        crop_h / height,
        crop_w * crop_h / (width * height),
        torch.log(crop_w / crop_h),
        present,
    ]
    person_columns = [
        ((px1 + px2) / 2 - x1) / crop_w,
        ((py1 + py2) / 2 - y1) / crop_h,
        (py1 - y1) / crop_h,
        (y2 - py2) / crop_h,
        person_h / crop_h,
        person_w / crop_w,
        overlap / (person_w * person_h),
    ]
    columns += [column * present for column in person_columns]
    return torch.stack(columns, dim=-1)


class SubjectiveBranch(nn.Module):
    """Subjective feature of a crop: its aligned RoI+RoD feature fused with its geometry."""

    def __init__(self, align_dim: int, out_dim: int, align_size: int = ALIGN_SIZE) -> None:
        super().__init__()
        self.content = nn.Sequential(
            nn.Conv2d(align_dim, SUBJECTIVE_HIDDEN, kernel_size=align_size), nn.ReLU(inplace=True), nn.Flatten(1)
        )
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

    feature_mean: torch.Tensor  # buffers
    feature_std: torch.Tensor

    def __init__(self, feature_dim: int, embed_dim: int = 16, taste_dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.evidence_encoder = nn.Sequential(
            nn.Linear(2 * feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True)
        )
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


class PICModel(GAICScorer):
    """Personalized cropping: GAIC's scorer (objective branch) + subjective branch + preference module.

    Called like every crop model, ``model(image, crop_box, human_box=None, crop_valid=None,
    user=None)`` -> :class:`CropOutput`: the objective (generic) scores, or for ``user`` (one of
    ``user_embeddings``, which the loader fills from a checkpoint) the objective score plus that
    user's preference. ``cfg.num_users`` > 0 adds the user classifier that pre-training trains the
    subjective branch with.
    """

    def __init__(self, cfg=None, loadweights: bool | None = None) -> None:
        cfg = config_PIC.cfg if cfg is None else cfg
        pretrained = cfg.pretrained if loadweights is None else loadweights
        super().__init__(cfg, pretrained, CropAlignFeatures)
        self.cfg = cfg
        align_dim = cfg.reduced_dim * (2 if cfg.use_rod_feature else 1)
        self.subjective_branch = SubjectiveBranch(align_dim, cfg.subjective_dim)
        self.user_classifier = nn.Linear(cfg.subjective_dim, cfg.num_users) if cfg.num_users else None
        self.preference = PreferenceModule(
            cfg.subjective_dim + GEOMETRY_DIM, cfg.embed_dim, cfg.taste_dim, cfg.preference_hidden
        )
        self.user_embeddings: dict[str, torch.Tensor] = {}

    @property
    def photo_spec(self) -> PhotoSpec:
        return spec_of_config(self.cfg, uses_person=True, takes_user=True)

    def forward(
        self,
        image: torch.Tensor,
        crop_box: torch.Tensor,
        human_box: torch.Tensor | None = None,
        crop_valid: torch.Tensor | None = None,
        user: str | None = None,
    ) -> CropOutput:
        """Scores (B, N) of crops ``crop_box`` (B, N, 4, input pixels); padded crops score ``-inf``.

        With a ``user``, ``human_box`` (B, 1, 4) feeds the crops' geometry; None means no person.
        """
        if user is None:
            return CropOutput(self.objective_scores(image, crop_box, crop_valid))
        embedding = self.embedding_of(user)
        if human_box is None:
            human_box = crop_box.new_full((crop_box.shape[0], 1, 4), -1.0)
        objective, features, _ = self.crop_outputs(image, crop_box, human_box, crop_valid)
        preference = self.preference(features, embedding.to(features))
        return CropOutput(scatter_valid_scores(objective + preference, crop_valid, *crop_box.shape[:2]))

    def describe_crops(
        self, feature_map: torch.Tensor, rois: torch.Tensor, human_boxes: torch.Tensor, width: float, height: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective scores (K,) and descriptions (K, subjective_dim + GEOMETRY_DIM) of rois (K, 5)."""
        aligned = self.crop_align(feature_map, rois)
        geometry = crop_geometry(rois[:, 1:], human_boxes, width, height)
        subjective = self.subjective_branch(aligned, geometry)
        return self.FC_layers(aligned).flatten(), torch.cat([subjective, geometry], dim=1)

    def crop_outputs(
        self,
        image: torch.Tensor,
        crop_box: torch.Tensor,
        human_box: torch.Tensor,
        crop_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    def _user_logits(
        self, feature_map: torch.Tensor, rois: torch.Tensor, human_boxes: torch.Tensor, width: float, height: float
    ) -> torch.Tensor:
        if self.user_classifier is None:
            raise ValueError("this PIC model has no user classifier (built with num_users=0)")
        geometry = crop_geometry(rois[:, 1:], human_boxes, width, height)
        return self.user_classifier(self.subjective_branch(self.crop_align(feature_map, rois), geometry))

    def user_logits(self, image: torch.Tensor, rois: torch.Tensor, human_boxes: torch.Tensor) -> torch.Tensor:
        """Logits (M, num_users) of which training user chose each crop ``rois`` (M, 5), with the
        person box (M, 4) of its image."""
        height, width = image.shape[-2:]
        return self._user_logits(self.reduced_features(image), rois, human_boxes, width, height)

    def pretraining_outputs(
        self,
        image: torch.Tensor,
        crop_box: torch.Tensor,
        crop_valid: torch.Tensor | None,
        best_rois: torch.Tensor,
        best_human: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        """The embedding of ``user``: the one check of a user id (a KeyError naming the known users)."""
        if user not in self.user_embeddings:
            known = ", ".join(sorted(self.user_embeddings)) or "none"
            raise KeyError(f"no embedding for user {user!r} in this PIC model (known users: {known})")
        return self.user_embeddings[user]


def user_images(
    data: PICData,
    dataset: PICImageDataset,
    cache: dict[str, ImageFeatures],
    user: str,
    names: Sequence[str],
    preference: PreferenceModule,
    best_crops: int,
) -> list[UserImage]:
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


# ----------------------------------------------------------------------------------------------
# Building the release's model from a config or a state_dict (cropping_model.load_crop_model loads)
# ----------------------------------------------------------------------------------------------


def _position_head_of(names: set) -> str | None:
    if "FC_layers_3.0.weight" in names:
        return "linear"
    return "conv1d" if "FC_layers_3.weight" in names else None


def is_official_pic_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` is one of the release's PIC models (also with DataParallel's
    ``module.`` prefix): ``Feat_ext.*``, ``DimRed.*``, ``FC_layers_1/2.*`` and ``FC_layers_3``, the
    Linear (``FC_layers_3.0.*``) or the Conv1d (``FC_layers_3.*``) one."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        return False
    names = set(release_state_dict(dict(state_dict)))
    return (
        {"DimRed.weight", "FC_layers_1.0.0.weight", "FC_layers_2.3.weight"} <= names
        and _position_head_of(names) is not None
        and any(name.startswith("Feat_ext.") for name in names)
    )


def official_pic_options(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The ``config_PIC`` options of the release's model that fits ``state_dict`` (backbone,
    reduced_dim, align size, users, positions, position head and attention read from its keys).

    Raises :class:`untils.checkpoint.CheckpointError` naming what does not fit.
    """
    if not is_official_pic_state_dict(state_dict):
        raise CheckpointError(
            "not a state_dict of PIC's release (expected Feat_ext.*, DimRed.*, FC_layers_1.*, "
            "FC_layers_2.* and FC_layers_3, Linear or Conv1d)"
        )
    state = release_state_dict(dict(state_dict))
    by_channels = {sum(channels): name for name, channels in BACKBONE_CHANNELS.items()}
    backbone = by_channels.get(state["DimRed.weight"].shape[1])
    if backbone is None:
        raise CheckpointError(
            f"PIC state_dict with DimRed over {state['DimRed.weight'].shape[1]} channels: its "
            f"backbone is not supported (known: {sorted(by_channels.items())})"
        )
    users = state["FC_layers_2.3.weight"].shape[0]
    head = _position_head_of(set(state))
    if head == "linear":
        positions = state["FC_layers_3.0.weight"].shape[0]
    else:
        positions = conv1d_positions(users)
        if tuple(state["FC_layers_3.weight"].shape) != (1, 1, CONV1D_KERNEL) or positions < 1:
            raise CheckpointError(
                f"PIC state_dict with FC_layers_3.weight of shape "
                f"{tuple(state['FC_layers_3.weight'].shape)} over {users} users: expected the "
                f"release's Conv1d (1, 1, {CONV1D_KERNEL}) over at least {CONV1D_KERNEL} users"
            )
    return {
        "variant": "official",
        "backbone": backbone,
        "reduced_dim": state["DimRed.weight"].shape[0],
        "num_users": users,
        "num_positions": positions,
        "align_size": state["FC_layers_1.0.0.weight"].shape[-1],
        "position_head": head,
        "attention": any(name.startswith("danet.") for name in state),
    }


def build_official_model(cfg, backbone_weight_path: str | None = None) -> PICOfficialModel:
    """A fresh official model for ``cfg`` (``config_PIC.Config``), ImageNet weights when given."""
    model = PICOfficialModel(
        cfg.backbone,
        cfg.reduced_dim,
        cfg.align_size,
        cfg.num_users,
        cfg.num_positions,
        cfg.attention,
        backbone_weight_path,
        cfg.position_head,
    )
    model.cfg = cfg
    return model


def pic_model_from_checkpoint(content: dict, overrides: dict | None = None) -> PICModel | PICOfficialModel:
    """A PIC model from our checkpoint content (``model_type`` PIC); the weights' names pick the
    variant: the release's names (:class:`PICOfficialModel`, which also records the checkpoint's
    ``stage`` and the ``trained_user`` it was fine-tuned to) or the embedding variant's
    (:class:`PICModel`, also checkpoints written before variants existed, with every
    user the checkpoint knows in ``user_embeddings``)."""
    if is_official_pic_state_dict(content.get("model", {})):
        stored = content.get("config", {})
        if isinstance(stored, dict) and stored.get("bgr_order") is True and "channel_order" not in stored:
            content = {**content, "config": {**stored, "channel_order": "bgr"}}  # its name before channel_order
        official = build_official_model(
            config_from_checkpoint(content, config_PIC.Config, {**(overrides or {}), "variant": "official"})
        )
        load_model_weights(official, content)
        official.stage, official.trained_user = content.get("stage"), content.get("user")
        return official
    model = PICModel(
        config_from_checkpoint(content, config_PIC.Config, {**(overrides or {}), "variant": "embedding"}),
        loadweights=False,
    )
    load_model_weights(model, content)
    model.user_embeddings = {
        user: torch.as_tensor(vector, dtype=torch.float32)
        for user, vector in content.get("user_embeddings", {}).items()
    }
    return model


# ----------------------------------------------------------------------------------------------
# One person's model: ranking with a prior or personal checkpoint, personalizing from ratings
# ----------------------------------------------------------------------------------------------


def _read_pic_checkpoint(path: str) -> dict:
    try:
        content = read_checkpoint(path)
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    if content.get("model_type") != "PIC" or content.get("stage") not in ("prior", "finetuned"):
        raise ValueError(
            f"{path} is neither a PIC prior (prior_PIC.py) nor a personal PIC model "
            "(finetune_PIC.py, personalize_from_ratings)"
        )
    return content


def load_pic_ranker(path: str, device: str = "cpu") -> PICRanker:
    """The :class:`PICRanker` of a prior or personal checkpoint (either variant), on ``device``."""
    content = _read_pic_checkpoint(path)
    model = pic_model_from_checkpoint(content).to(device).eval()
    if content["stage"] == "prior":
        return PICRanker(model, "prior", None, path)
    return PICRanker(model, "personal", content.get("user"), path)


def personalize_from_ratings(
    prior_path: str,
    user: str,
    ratings_csv: str,
    photo_dir: str,
    out_path: str,
    *,
    human_boxes: Mapping[str, Box | None] | None = None,
    progress: Progress | None = None,
) -> dict:
    """Fine-tunes the prior on ``user``'s rows of ``ratings_csv`` and writes the personal model.

    ``ratings_csv`` has the columns ``untils.pic_format.RATINGS_CSV_COLUMNS``; its image column
    names files in ``photo_dir`` (upright photos), boxes in those photos' pixels, rows of other
    users ignored; at least ``MIN_RATED_PHOTOS`` photos with at least
    ``MIN_RATED_CROPS`` rated crops each. ``human_boxes`` maps an image name
    to its person box (None: no person). The personal model is written atomically to ``out_path``
    (a previous file stays untouched on failure); ``progress(fraction 0..1, message)`` is called as
    it goes. Returns ``{"user", "photos", "ratings", "seconds", "variant", "scope", "step",
    "train_srcc", "path"}``. Raises ValueError with one sentence naming the file or value when the
    data are unusable. Only embedding-variant priors are personalized (README, PIC: the variant
    that learns best from 5 to 20 rated photos), with ``PERSONALIZATION_OPTIONS`` over the
    prior's fine-tuning options.
    """
    if not USER_ID_PATTERN.match(user):
        raise ValueError(f"user id {user!r} must be letters, digits, '_', '-' or '.' (not first)")
    content = _read_pic_checkpoint(prior_path)
    model = pic_model_from_checkpoint(content, PERSONALIZATION_OPTIONS)
    if content["stage"] != "prior" or not isinstance(model, PICModel) or not model.user_embeddings:
        raise ValueError(f"{prior_path} is not an embedding-variant PIC prior (prior_PIC.py --variant embedding)")
    return personalize_model(
        model, model.user_embeddings, user, ratings_csv, photo_dir, out_path, MOS_MEAN, human_boxes, progress
    )
