"""Personalized image cropping (PIC): the published model and this project's embedding variant.

**The official model** (``--variant official``, the default): "Crop the Way You Like: Personalized
Image Cropping by Integrating Subjective and Objective Features"; release Cooperxjt/PIC
(``models/prior_model.py``, ``finetune_model.py``, ``pre_model.py``, ``tools/m_Loss.py``). Module
and parameter names are the release's, so its state_dicts load with ``strict=True``
(:func:`official_pic_from_state_dict`):

* ``Feat_ext``: GAIC's release backbones (``untils.backbones.GAICBackbone``), features
  ``cat(bilinear-down(f3), f4, 0.5 * bilinear-up(f5))`` -> ``DimRed`` (1x1 conv, reduced_dim 8);
* objective branch: RoIAlign + RoDAlign (align 9, 1/16) -> ``FC_layers_1`` (conv align x align ->
  768, BatchNorm, ReLU; 1x1 -> 128, BatchNorm, ReLU; dropout; 1x1 -> 1): the generic crop score;
* subjective branch: the same backbone and ``DimRed`` on the whole photo at 256x256 ->
  ``FC_layers_2`` (the same stack ending in one logit per training user, global average pooling):
  the user logits, the "continuous latent space" of user attributes;
* ``FC_layers_3`` = Linear(num_users, num_positions) maps the logits to one offset per candidate
  position (CPC's 24 views, in their fixed order); score = objective + offset.

``attention=True`` is the release's attention variant: DANet's position and channel attention
(:class:`DualAttention`) on the concatenated features of the subjective branch before ``DimRed``.
Differences from the release are listed in README.md (PIC section). Its inputs are prepared by
``untils.pic_format.pic_crop_image`` and ``pic_user_image``.

**The embedding variant** (``--variant embedding``, :class:`PICModel`) is this project's extension,
not the published method: it keeps PIC's outline (objective + subjective branches, a prior, few-shot
fine-tuning). One backbone feeds two branches: the objective branch is GAIC's head on RoI+RoD
features (the generic model), the subjective branch describes crops so that users can be told apart
(trained by classifying which user chose a crop). The preference module embeds a user from the
subjective features of the user's best crops and adds a user-specific preference to the objective
score. Explicit crop geometry (the crop in the image, and the person in the crop) feeds both the
subjective branch and the preference module. Its prior and fine-tuning stages train only the
preference module, on what the frozen model says about each rated image's crops
(:func:`extract_features`, :class:`UserImage`).

:func:`load_pic_model` tells the two variants apart by the names of their weights.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import config_PIC
from cropping_dataset import CropAnnotation
from cropping_model import (ALIGN_SIZE, CropAlignFeatures, CropOutput, GAICModel, boxes_with_batch_index,
                            mask_padded_scores, scatter_valid_scores)
from pic_dataset import PICData, PICImageDataset, best_crop_indices
from untils.backbones import BACKBONE_CHANNELS, GAICBackbone
from untils.batching import evaluation_loader
from untils.boxes import FEATURE_STRIDE, flip_boxes_horizontal, rescale_boxes
from untils.checkpoint import CheckpointError, config_from_checkpoint, load_model_weights, release_state_dict
from untils.inference import move_batch
from untils.metrics import gaicd_metrics, weighted_accuracy
from untils.pic_format import pic_crop_image, pic_user_image

RELEASE_NUM_USERS = 945  # the release's training users and CPC's views per image (its hard-wired sizes)
RELEASE_NUM_POSITIONS = 24
FIDELITY_EPS = 1e-8  # inside the square roots of the fidelity loss, as the release
GEOMETRY_DIM = 16  # crop_geometry's columns
SUBJECTIVE_HIDDEN = 128


# ----------------------------------------------------------------------------------------------
# DANet's dual attention (the release's optional DAModule)
# ----------------------------------------------------------------------------------------------

class PositionAttention(nn.Module):
    """DANet's position attention module (Fu et al., "Dual Attention Network for Scene
    Segmentation", CVPR 2019, Sec. 3.2; github junfu1115/DANet): every position is the input plus
    ``gamma`` times an attention-weighted sum of all positions' values, attention
    ``softmax(query^T key)`` over positions, query and key 1x1 convs to C/8 channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))  # starts as the identity, as DANet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)             # (B, HW, C/8)
        attention = torch.softmax(query @ self.key(x).flatten(2), -1)  # (B, HW, HW)
        out = self.value(x).flatten(2) @ attention.transpose(1, 2)     # (B, C, HW)
        return x + self.gamma * out.view(batch, channels, height, width)


class ChannelAttention(nn.Module):
    """DANet's channel attention module (same paper, Sec. 3.3): each channel is the input plus
    ``beta`` times an attention-weighted sum of all channels, attention ``softmax(A A^T)`` over
    channels (DANet's code subtracts the energy from its row maximum first, kept here)."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)                                            # (B, C, HW)
        energy = flat @ flat.transpose(1, 2)                           # (B, C, C)
        energy = energy.amax(dim=-1, keepdim=True).expand_as(energy) - energy
        out = torch.softmax(energy, dim=-1) @ flat
        return x + self.beta * out.view_as(x)


class DualAttention(nn.Module):
    """DANet's two attention modules side by side, their outputs summed (DANet's fusion)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.position = PositionAttention(channels)
        self.channel = ChannelAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.position(x) + self.channel(x)


# ----------------------------------------------------------------------------------------------
# The official model
# ----------------------------------------------------------------------------------------------

def pic_fc_layers(in_dim: int, out_dim: int, align_size: int, pooled: bool) -> nn.Sequential:
    """The release's ``fc_layers_1`` (``pooled=False``, one score per crop) and ``fc_layers_2``
    (``pooled=True``, ``out_dim`` user logits averaged over positions): conv align x align -> 768,
    BatchNorm, ReLU; 1x1 -> 128, BatchNorm, ReLU; dropout 0.5; 1x1 -> out_dim."""
    layers = [nn.Sequential(nn.Conv2d(in_dim, 768, kernel_size=align_size), nn.BatchNorm2d(768), nn.ReLU(inplace=True)),
              nn.Sequential(nn.Conv2d(768, 128, kernel_size=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True)),
              nn.Dropout(p=0.5), nn.Conv2d(128, out_dim, kernel_size=1)]
    if pooled:
        layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()]
    return nn.Sequential(*layers)


def concatenated_scales(f3: torch.Tensor, f4: torch.Tensor, f5: torch.Tensor) -> torch.Tensor:
    """GAIC's multi-scale recipe before ``DimRed``: f3 halved, f4, half of f5 doubled (bilinear,
    align_corners=True as ``nn.UpsamplingBilinear2d``), concatenated."""
    down = F.interpolate(f3, scale_factor=0.5, mode="bilinear", align_corners=True)
    up = F.interpolate(f5, scale_factor=2.0, mode="bilinear", align_corners=True)
    if not down.shape[-2:] == f4.shape[-2:] == up.shape[-2:]:
        raise ValueError(f"feature maps of sizes {tuple(down.shape[-2:])}, {tuple(f4.shape[-2:])} and "
                         f"{tuple(up.shape[-2:])}: PIC's images need sides that are multiples of 32")
    return torch.cat([down, f4, 0.5 * up], dim=1)


class PICOfficialModel(nn.Module):
    """The release's prior/fine-tuning model (``persionality_crop_model_multi_scale_shared``).

    ``forward(image, crop_box, human_box=None, crop_valid=None, user_image=None)``: ``image``
    (B, 3, H, W) prepared by :func:`pic_crop_image`, ``crop_box`` (B, N, 4) in its pixels,
    ``user_image`` (B, 3, 256, 256) prepared by :func:`pic_user_image` (the same photo: the
    subjective branch describes its content). Without ``user_image`` the score is the objective
    (generic) score; with it, N must be ``num_positions`` (the candidates in their fixed order) and
    each crop gets its position's offset. Padded crops (``crop_valid`` False) score ``-inf``;
    ``human_box`` is accepted, like every crop model here, and not used.
    """

    def __init__(self, backbone: str = "mobilenetv2", reduced_dim: int = 8, align_size: int = 9,
                 num_users: int = RELEASE_NUM_USERS, num_positions: int = RELEASE_NUM_POSITIONS,
                 attention: bool = False, backbone_weight_path: Optional[str] = None) -> None:
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
        self.FC_layers_3 = nn.Sequential(nn.Linear(num_users, num_positions))

    def objective_scores(self, image: torch.Tensor, crop_box: torch.Tensor) -> torch.Tensor:
        """(B, N) generic scores of crops (B, N, 4)."""
        batch = image.shape[0]
        if crop_box.dim() != 3 or crop_box.shape[0] != batch or crop_box.shape[-1] != 4:
            raise ValueError(f"crop_box of shape {tuple(crop_box.shape)}: expected ({batch}, N, 4)")
        feature_map = self.DimRed(concatenated_scales(*self.Feat_ext(image)))
        aligned = self.crop_align(feature_map, boxes_with_batch_index(crop_box.to(image.dtype)))
        return self.FC_layers_1(aligned).reshape(batch, crop_box.shape[1])

    def user_logits(self, user_image: torch.Tensor) -> torch.Tensor:
        """(B, num_users) logits of which training user the photos (B, 3, 256, 256) belong to."""
        features = concatenated_scales(*self.Feat_ext(user_image))
        if self.danet is not None:
            features = self.danet(features)
        return self.FC_layers_2(self.DimRed(features))

    def position_offsets(self, user_image: torch.Tensor) -> torch.Tensor:
        """(B, num_positions) personal offsets of the candidate positions."""
        return self.FC_layers_3(self.user_logits(user_image))

    def forward(self, image: torch.Tensor, crop_box: torch.Tensor, human_box: Optional[torch.Tensor] = None,
                crop_valid: Optional[torch.Tensor] = None, user_image: Optional[torch.Tensor] = None) -> CropOutput:
        scores = self.objective_scores(image, crop_box)
        if user_image is not None:
            if crop_box.shape[1] != self.num_positions:
                raise ValueError(f"{crop_box.shape[1]} crops per image: the personal offsets need exactly "
                                 f"{self.num_positions} candidates in their fixed order")
            scores = scores + self.position_offsets(user_image)
        return CropOutput(mask_padded_scores(scores, crop_valid))


def fidelity_rank_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The release's ``loss_m``: over every pair i < j of one image's crops, the fidelity between
    the probit of the predicted difference, Phi(pred_i - pred_j), and the target's order
    ((sign(target_i - target_j) + 1) / 2: ties give 1/2); the mean of 1 - fidelity."""
    pred, target = pred.reshape(-1), target.reshape(-1).to(pred.dtype)
    if pred.numel() < 2 or pred.numel() != target.numel():
        raise ValueError(f"fidelity_rank_loss needs two or more crops and one target each, got {pred.numel()} "
                         f"predictions and {target.numel()} targets")
    rows, cols = torch.triu_indices(pred.numel(), pred.numel(), offset=1, device=pred.device)
    probability = 0.5 * (1 + torch.erf((pred[rows] - pred[cols]) / np.sqrt(2.0)))
    order = 0.5 * (torch.sign(target[rows] - target[cols]) + 1)
    fidelity = torch.sqrt(probability * order + FIDELITY_EPS) + torch.sqrt((1 - probability) * (1 - order)
                                                                            + FIDELITY_EPS)
    return torch.mean(1 - fidelity)


# ----------------------------------------------------------------------------------------------
# The official recipe's data and steps (pretrain_PIC.py, prior_PIC.py, finetune_PIC.py)
# ----------------------------------------------------------------------------------------------

@dataclass
class RatedImage:
    """One rated image, ready for the official model: its inputs and the user's scores."""
    name: str
    image: torch.Tensor      # (1, 3, H, W) objective branch input
    crop_box: torch.Tensor   # (1, N, 4) crops in its pixels, in the file's fixed order
    user_image: torch.Tensor  # (1, 3, 256, 256) subjective branch input, without augmentation
    scores: torch.Tensor     # (N,)


def rated_images(image_dir: str, ratings: Mapping[str, CropAnnotation], bgr_order: bool = False) -> list[RatedImage]:
    """The images of a user's file as :class:`RatedImage` (crop boxes scaled as the release:
    x1/y1 floored, x2/y2 ceiled)."""
    examples = []
    for name, entry in ratings.items():
        with Image.open(os.path.join(image_dir, name)) as photo:
            photo = photo.convert("RGB")
            image, ratio_w, ratio_h = pic_crop_image(np.asarray(photo), bgr_order)
            user_image = pic_user_image(photo)
        boxes = rescale_boxes(np.asarray(entry.boxes, dtype=np.float64), ratio_w, ratio_h)
        examples.append(RatedImage(name, image, torch.from_numpy(boxes).unsqueeze(0), user_image,
                                   torch.as_tensor(entry.scores, dtype=torch.float32)))
    return examples


def augmented_user_image(user_image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A training view of the subjective input: mirrored half of the time, brightness and contrast
    jittered by up to 20% (a subset of the release's training transform, applied after
    normalisation)."""
    view = user_image.flip(-1) if torch.rand((), generator=generator) < 0.5 else user_image
    contrast, brightness = 1 + 0.4 * (torch.rand(2, generator=generator) - 0.5)
    return (view - view.mean()) * contrast + view.mean() * brightness


def official_loss(scores: torch.Tensor, target: torch.Tensor, rank_weight: float, l1_weight: float) -> torch.Tensor:
    """``rank_weight`` x :func:`fidelity_rank_loss` + ``l1_weight`` x smooth-L1 of one image's crops."""
    scores, target = scores.reshape(-1), target.reshape(-1).to(scores.dtype)
    return rank_weight * fidelity_rank_loss(scores, target) + l1_weight * F.smooth_l1_loss(scores, target)


def train_on_images(model: PICOfficialModel, examples: Sequence[RatedImage], epochs: int, lr: float,
                    rank_weight: float, l1_weight: float, generator: torch.Generator) -> list[float]:
    """The prior's and fine-tuning's loop: every parameter, Adam, batch 1, images in order, the
    model in training mode throughout, crops in their fixed order; mean loss per epoch."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(epochs):
        total = 0.0
        for example in examples:
            scores = model(example.image, example.crop_box,
                           user_image=augmented_user_image(example.user_image, generator)).score
            loss = official_loss(scores, example.scores, rank_weight, l1_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        history.append(total / max(len(examples), 1))
    model.eval()
    return history


@torch.no_grad()
def evaluate_images(model: PICOfficialModel, examples: Sequence[RatedImage], personal: bool = True) -> dict[str, float]:
    """Acc_K/5, Acc_K/10, wAcc_K/5, wAcc_K/10 (K = 1..4, and their means), SRCC, PCC of a user's
    images (fractions, not x100); ``personal=False`` scores with the objective branch alone."""
    model.eval()
    predictions = [model(example.image, example.crop_box,
                         user_image=example.user_image if personal else None).score[0] for example in examples]
    targets = [example.scores for example in examples]
    table = gaicd_metrics(targets, predictions)
    wacc5, wacc10 = weighted_accuracy(targets, predictions)
    for k, (five, ten) in enumerate(zip(wacc5, wacc10), start=1):
        table[f"wacc{k}_5"], table[f"wacc{k}_10"] = five, ten
    table["wacc5"], table["wacc10"] = float(np.mean(wacc5)), float(np.mean(wacc10))
    return table


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
        cfg = config_PIC.cfg if cfg is None else cfg
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
    """GAICD metrics (Acc_K/N, SRCC, PCC) and mean wAcc_K/5, wAcc_K/10 of a user's images, scored as
    :func:`user_scores` (view 0)."""
    targets = [example.scores for example in examples]
    predictions = [user_scores(preference, embedding, example) for example in examples]
    wacc5, wacc10 = weighted_accuracy(targets, predictions)
    return {**gaicd_metrics(targets, predictions), "wacc5": float(np.mean(wacc5)), "wacc10": float(np.mean(wacc10))}


# ----------------------------------------------------------------------------------------------
# Loading (both variants)
# ----------------------------------------------------------------------------------------------

def is_official_pic_state_dict(state_dict: Mapping[str, object]) -> bool:
    """Whether ``state_dict`` is one of the release's PIC models (also with DataParallel's
    ``module.`` prefix): ``Feat_ext.*``, ``DimRed.*``, ``FC_layers_1/2.*`` and the Linear
    ``FC_layers_3.0``."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        return False
    names = set(release_state_dict(dict(state_dict)))
    return ({"DimRed.weight", "FC_layers_1.0.0.weight", "FC_layers_2.3.weight", "FC_layers_3.0.weight"} <= names
            and any(name.startswith("Feat_ext.") for name in names))


def official_pic_from_state_dict(state_dict: Mapping[str, torch.Tensor],
                                 overrides: Optional[dict] = None) -> PICOfficialModel:
    """The release's model built to fit ``state_dict`` (backbone, reduced_dim, align size, users,
    positions and attention read from its keys), weights loaded strictly; CPU, eval mode.
    ``model.cfg`` is a ``config_PIC.Config`` of the official variant, ``overrides`` winning.

    Raises :class:`untils.checkpoint.CheckpointError` naming what does not fit.
    """
    if not is_official_pic_state_dict(state_dict):
        raise CheckpointError("not a state_dict of PIC's release (expected Feat_ext.*, DimRed.*, FC_layers_1.*, "
                              "FC_layers_2.* and the Linear FC_layers_3.0; the release's Conv1d FC_layers_3 "
                              "models are not supported)")
    state = release_state_dict(dict(state_dict))
    by_channels = {sum(channels): name for name, channels in BACKBONE_CHANNELS.items()}
    backbone = by_channels.get(state["DimRed.weight"].shape[1])
    if backbone is None:
        raise CheckpointError(f"PIC state_dict with DimRed over {state['DimRed.weight'].shape[1]} channels: its "
                              f"backbone is not supported (known: {sorted(by_channels.items())})")
    positions, users = state["FC_layers_3.0.weight"].shape
    options = {"variant": "official", "backbone": backbone, "reduced_dim": state["DimRed.weight"].shape[0],
               "num_users": users, "num_positions": positions,
               "align_size": state["FC_layers_1.0.0.weight"].shape[-1],
               "attention": any(name.startswith("danet.") for name in state)}
    model = build_official_model(config_from_checkpoint({"config": options}, config_PIC.Config, overrides))
    load_model_weights(model, {"model": state})
    return model.eval()


def build_official_model(cfg, backbone_weight_path: Optional[str] = None) -> PICOfficialModel:
    """A fresh official model for ``cfg`` (``config_PIC.Config``), ImageNet weights when given."""
    model = PICOfficialModel(cfg.backbone, cfg.reduced_dim, cfg.align_size, cfg.num_users, cfg.num_positions,
                             cfg.attention, backbone_weight_path)
    model.cfg = cfg
    return model


def load_pic_model(content: dict, device: torch.device | str = "cpu", overrides: Optional[dict] = None) -> nn.Module:
    """A PIC model (eval mode, on ``device``) from our checkpoint content (``model_type`` PIC);
    ``cropping_model.load_crop_model`` calls it. The weights' names pick the variant: the release's
    names (:class:`PICOfficialModel`) or the embedding variant's (:class:`PICModel`, also checkpoints
    written before variants existed)."""
    if content.get("model_type") != "PIC":
        raise CheckpointError(f"checkpoint is not a PIC checkpoint (model_type={content.get('model_type')!r})")
    if not is_official_pic_state_dict(content.get("model", {})):
        return load_embedding_model(content, device, {**(overrides or {}), "variant": "embedding"})
    model = build_official_model(config_from_checkpoint(content, config_PIC.Config,
                                                        {**(overrides or {}), "variant": "official"}))
    load_model_weights(model, content)
    return model.to(device).eval()


def load_embedding_model(content: dict, device: torch.device | str = "cpu",
                         overrides: Optional[dict] = None) -> PICModel:
    """The embedding variant (eval mode, on ``device``) from the content of a pretrain_PIC.py,
    prior_PIC.py or finetune_PIC.py checkpoint of that variant (:func:`load_pic_model` calls it).

    Its ``user_embeddings`` hold every user the checkpoint knows: the prior's training users, or
    the fine-tuned user (and the prior's); select one with ``model.user = name``.
    """
    if content.get("model_type") != "PIC":
        raise CheckpointError(f"checkpoint is not a PIC checkpoint (model_type={content.get('model_type')!r})")
    model = PICModel(config_from_checkpoint(content, config_PIC.Config, overrides), loadweights=False)
    load_model_weights(model, content)
    model.user_embeddings = {user: torch.as_tensor(vector, dtype=torch.float32)
                             for user, vector in content.get("user_embeddings", {}).items()}
    return model.to(device).eval()
