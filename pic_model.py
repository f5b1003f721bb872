"""Personalized image cropping (PIC) as published: the official model, its loss and its loader.

"Crop the Way You Like: Personalized Image Cropping by Integrating Subjective and Objective
Features"; release Cooperxjt/PIC (``models/prior_model.py``, ``finetune_model.py``,
``pre_model.py``, ``tools/m_Loss.py``). Module and parameter names are the release's, so its
state_dicts load with ``strict=True`` (:func:`official_pic_from_state_dict`):

* ``Feat_ext``: GAIC's release backbones (``gaic_model.GAICBackbone``), features
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
Differences from the release are listed in README.md (PIC section). This project's own variant
(set-encoder user embedding, episodic prior) is ``pic_embedding.py`` (``--variant embedding``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from cropping_model import CropAlignFeatures, CropOutput, boxes_with_batch_index, mask_padded_scores
from gaic_model import BACKBONE_CHANNELS, GAICBackbone, gaic_preprocess
from untils.boxes import FEATURE_STRIDE
from untils.checkpoint import CheckpointError, config_from_checkpoint, load_model_weights, release_state_dict
from untils.metrics import gaicd_metrics, weighted_accuracy
from untils.photos import IMAGE_NET_MEAN, IMAGE_NET_STD

if TYPE_CHECKING:
    from cropping_dataset import CropAnnotation

USER_IMAGE_SIZE = 256  # the subjective branch sees the whole photo at 256x256
RELEASE_NUM_USERS = 945  # the release's training users and CPC's views per image (its hard-wired sizes)
RELEASE_NUM_POSITIONS = 24
FIDELITY_EPS = 1e-8  # inside the square roots of the fidelity loss, as the release


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
# Preprocessing
# ----------------------------------------------------------------------------------------------

def pic_crop_image(rgb: np.ndarray, bgr_order: bool = False) -> tuple[torch.Tensor, float, float]:
    """The objective branch's input: GAIC's release preprocessing (``gaic_model.gaic_preprocess``).

    ``bgr_order=True`` feeds the channels in cv2's BGR order, as the release does (only for
    checkpoints trained that way).
    """
    return gaic_preprocess(np.ascontiguousarray(rgb[..., ::-1]) if bgr_order else rgb)


def pic_user_image(photo: Image.Image) -> torch.Tensor:
    """The subjective branch's input (1, 3, 256, 256): the whole photo resized to 256x256 (PIL
    bilinear, as torchvision's ``Resize`` on a PIL image), [0, 1], ImageNet mean/std. No random
    augmentation: the release's test-time jitter is a training transform."""
    resized = photo.convert("RGB").resize((USER_IMAGE_SIZE, USER_IMAGE_SIZE), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(IMAGE_NET_MEAN, dtype=np.float32)) / np.array(IMAGE_NET_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).unsqueeze(0)


# ----------------------------------------------------------------------------------------------
# Loading
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
    model = build_official_model(config_from_checkpoint({"config": options}, _pic_config(), overrides))
    load_model_weights(model, {"model": state})
    return model.eval()


def _pic_config() -> type:
    from config_PIC import Config  # config_PIC imports nothing from here; kept local like cropping_model's
    return Config


def build_official_model(cfg, backbone_weight_path: Optional[str] = None) -> PICOfficialModel:
    """A fresh official model for ``cfg`` (``config_PIC.Config``), ImageNet weights when given."""
    model = PICOfficialModel(cfg.backbone, cfg.reduced_dim, cfg.align_size, cfg.num_users, cfg.num_positions,
                             cfg.attention, backbone_weight_path)
    model.cfg = cfg
    return model


def load_pic_model(content: dict, device: torch.device | str = "cpu", overrides: Optional[dict] = None) -> nn.Module:
    """A PIC model (eval mode, on ``device``) from our checkpoint content (``model_type`` PIC);
    ``cropping_model.load_crop_model`` calls it. The weights' names pick the variant: the release's
    names (:class:`PICOfficialModel`) or the embedding variant's (``pic_embedding.PICModel``, also
    checkpoints written before variants existed)."""
    if content.get("model_type") != "PIC":
        raise CheckpointError(f"checkpoint is not a PIC checkpoint (model_type={content.get('model_type')!r})")
    if not is_official_pic_state_dict(content.get("model", {})):
        from pic_embedding import load_embedding_model  # the variant builds on config_PIC and pic_dataset
        return load_embedding_model(content, device, {**(overrides or {}), "variant": "embedding"})
    model = build_official_model(config_from_checkpoint(content, _pic_config(), {**(overrides or {}),
                                                                                  "variant": "official"}))
    load_model_weights(model, content)
    return model.to(device).eval()


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


def rated_images(image_dir: str, ratings: Mapping[str, "CropAnnotation"], bgr_order: bool = False) -> list[RatedImage]:
    """The images of a user's file as :class:`RatedImage` (crop boxes scaled as the release:
    x1/y1 floored, x2/y2 ceiled)."""
    examples = []
    for name, entry in ratings.items():
        with Image.open(os.path.join(image_dir, name)) as photo:
            photo = photo.convert("RGB")
            image, ratio_w, ratio_h = pic_crop_image(np.asarray(photo), bgr_order)
            user_image = pic_user_image(photo)
        boxes = np.asarray(entry.boxes, dtype=np.float64) * [ratio_w, ratio_h, ratio_w, ratio_h]
        boxes = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1)
        examples.append(RatedImage(name, image, torch.from_numpy(boxes).float().unsqueeze(0), user_image,
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
