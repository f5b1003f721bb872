"""Crop-scoring models: the human-centric model (ECCV 2022), our GAIC baseline, GAIC's released
model, their losses, and the one loader of every checkpoint kind (:func:`load_crop_model`, PIC's
included: ``pic_model`` builds on ``untils.crop_heads``, never on this module).

The first two share one backbone builder (:func:`untils.backbones.build_backbone`, three feature
scales); all three share one RoI/RoD head (``untils.crop_heads``: :class:`CropOutput`, the calling
convention; ``rod_align.CropAlignFeatures``, the RoI + RoD features). Parameter names and shapes
of :class:`HumanCentricCroppingModel` are those of the official release, so its checkpoints load
with ``strict=True``. Differences from the release, each a bug fix that leaves its
numbers as they are:

* whether an image contains a person is decided per image, not from the first image of the batch;
* ``use_rod_feature=False`` really removes the RoD branch (the release ignored the switch);
* the graph-reasoning similarity cannot divide by a zero norm;
* padded crops of a multi-image batch (``crop_valid``) are never scored: their score is ``-inf``.

The pairwise rank loss weighs pairs by ``sin`` of the score difference, as the release computes it
(``rank_loss_weighting="sign"`` is the documented variant). GAIC's release itself trains with
smooth-L1 alone (the GAIC-official preset).

:class:`GAICOfficialModel` is ``crop_model_multi_scale_shared`` of GAIC's PyTorch release
(HuiZeng/Grid-Anchor-based-Image-Cropping-Pytorch) with its module names (``Feat_ext``, ``DimRed``,
``FC_layers``), so its checkpoints load with ``strict=True``: the release's backbones
(:class:`untils.backbones.GAICBackbone`); ``cat(bilinear-down(f3), f4, 0.5 * bilinear-up(f5))``
(align_corners=True) -> ``DimRed``; RoI + RoD align at 1/16 -> ``FC_layers``. The release's
``fc_layers`` names a dropout whose definition is commented out: checkpoints trained with
``nn.Dropout`` have the last conv at ``FC_layers.3``, ones without at ``FC_layers.2``; both are built
(:func:`official_gaic_from_state_dict` picks from the keys). Its input photos are prepared by
:func:`untils.preprocessing.gaic_preprocess`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import config_PIC
from config_GAICD import MOS_MEAN, MOS_STD, Config
from pic_model import (
    PICModel,
    PICOfficialModel,
    build_official_model,
    is_official_pic_state_dict,
    official_pic_options,
    pic_model_from_checkpoint,
)
from rod_align import CropAlignFeatures
from roi_align import RoIAlignAvg
from untils.backbones import BACKBONE_CHANNELS, BackboneWeightsError, GAICBackbone, build_backbone
from untils.boxes import FEATURE_STRIDE, HEAT_MAP_SIZE, crop_mask_factors, partition_masks
from untils.checkpoint import (
    CheckpointError,
    config_from_checkpoint,
    load_model_weights,
    read_checkpoint,
    release_state_dict,
    with_batch_counters,
)
from untils.content_preserve import ContentPreserveModule
from untils.crop_heads import (
    ALIGN_SIZE,
    CropOutput,
    GAICScorer,
    boxes_with_batch_index,
    check_crop_box,
    gaic_fc_layers,
    mask_padded_scores,
    release_scales,
    resize_to,
)
from untils.preprocessing import CHANNEL_ORDERS, GAIC_RELEASE_SPEC, PhotoSpec, spec_of_config
from untils.score_losses import group_score_loss

CONTENT_FEAT_DIM = 256

# ----------------------------------------------------------------------------------------------
# Human-centric model
# ----------------------------------------------------------------------------------------------


class PartitionAwareModule(nn.Module):
    """Partition-aware feature: the 3x3 regions around the person's box get their own conv.

    ``partition`` 9: nine region-specific features fused with the partition mask; 0: the nine
    features averaged (no partition); 1: the person's region only; 2: person vs. background.
    With ``concat_with_human`` the person's RoI feature is appended to every position first.
    """

    def __init__(self, in_dim: int, partition: int = 9, concat_with_human: bool = True) -> None:
        super().__init__()
        if partition not in (0, 1, 2, 9):
            raise ValueError(f"partition_aware_type={partition!r}; expected 0, 1, 2 or 9")
        human_dim = in_dim // 2 if concat_with_human else 0
        groups = 9 if partition in (0, 9) else partition
        self.group_conv = nn.Conv2d(in_dim + human_dim, in_dim * groups, kernel_size=3, padding=1)
        if concat_with_human:
            self.RoIAlign = RoIAlignAvg(3, 3, 1.0 / FEATURE_STRIDE)
            self.RoIConv = nn.Conv2d(in_dim, human_dim, kernel_size=3)
        self.partition = partition
        self.groups = groups
        self.concat_with_human = concat_with_human

    @property
    def out_channels(self) -> int:
        """Channels of the partition map it returns."""
        return 9 if self.partition in (0, 9) else self.partition

    def forward(
        self, x: torch.Tensor, human_rois: torch.Tensor, partition_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,C,H,W), human_rois (B,5), partition_mask (B,9,H,W) -> (x + fused, partition map)."""
        if self.concat_with_human:
            human = self.RoIConv(self.RoIAlign(x, human_rois))  # (B, C/2, 1, 1)
            x_in = torch.cat([x, human.expand(-1, -1, x.shape[-2], x.shape[-1])], dim=1)
        else:
            x_in = x
        p_conv = F.relu(self.group_conv(x_in))
        if self.partition == 1:
            fused = p_conv * partition_mask[:, 4:5]
            return x + fused, p_conv.mean(dim=1, keepdim=True)
        batch, _, height, width = p_conv.shape
        p_feat = p_conv.view(batch, self.groups, -1, height, width)
        p_mean = p_feat.mean(dim=2)
        if self.partition == 0:
            fused = p_feat.mean(dim=1)
        elif self.partition == 9:
            fused = (p_feat * partition_mask.unsqueeze(2)).sum(dim=1)
        else:
            human_mask = partition_mask[:, 4:5]
            fused = p_feat[:, 0] * human_mask + p_feat[:, 1] * (1 - human_mask)
        return x + fused, p_mean


class HumanCentricCroppingModel(nn.Module):
    """The human-centric cropping model (Zhang et al., ECCV 2022).

    ``forward(image, crop_box, human_box=None, crop_valid=None, partition_mask=None)`` with ``image``
    (B,3,H,W), ``crop_box`` (B,N,4) in input pixels, ``human_box`` (B,1,4) (-1s, or None, when there
    is no person), ``crop_valid`` (B,N) bool marking the real crops of a padded batch, and
    ``partition_mask`` (B,9,H/16,W/16) (built from ``human_box`` when not given) returns a
    :class:`CropOutput`: scores (B,N), heat map (B,1,64,64) and partition feature (B,P,H/16,W/16),
    the latter two None when the model has no such module. Crop masks are never drawn: the content
    feature uses their row and column factors (:func:`untils.boxes.crop_mask_factors`).
    """

    def __init__(self, cfg=None, loadweights: bool | None = None) -> None:
        super().__init__()
        if cfg is None:
            from config_GAICD import cfg
        self.cfg = cfg
        pretrained = cfg.pretrained if loadweights is None else loadweights
        reduce_dim = cfg.reduced_dim
        self.backbone = build_backbone(cfg.backbone, pretrained, cfg.backbone_weight_path)
        c3, c4, c5 = self.backbone.channels
        self.f3_layer = nn.Conv2d(c3, 256, kernel_size=1)
        self.f4_layer = nn.Conv2d(c4, 256, kernel_size=1)
        self.f5_layer = nn.Conv2d(c5, 256, kernel_size=1)
        self.feat_ext = nn.Conv2d(256, reduce_dim, kernel_size=1)
        self.partition_aware = (
            PartitionAwareModule(reduce_dim, cfg.partition_aware_type, cfg.concat_with_human)
            if cfg.use_partition_aware
            else None
        )
        self.content_preserve = (
            ContentPreserveModule(reduce_dim, 8, CONTENT_FEAT_DIM, cfg.content_preserve_type)
            if cfg.use_content_preserve
            else None
        )
        self.only_content = bool(cfg.use_content_preserve and cfg.only_content_preserve)
        self.crop_align = CropAlignFeatures(ALIGN_SIZE, 1.0 / FEATURE_STRIDE, cfg.use_rod_feature)
        align_dim = reduce_dim * (2 if cfg.use_rod_feature else 1)
        fc1_dim, fc2_dim = 512, 256
        if self.only_content:
            self.roi_feat_layer = None
            head_dim = CONTENT_FEAT_DIM
        else:
            self.roi_feat_layer = nn.Sequential(
                nn.Conv2d(align_dim, fc1_dim, kernel_size=ALIGN_SIZE),
                nn.ReLU(True),
                nn.Flatten(1),
                nn.Linear(fc1_dim, fc2_dim, bias=False),
            )
            head_dim = fc2_dim + (CONTENT_FEAT_DIM if self.content_preserve is not None else 0)
        self.fc_layer = nn.Linear(head_dim, 1)

    @property
    def photo_spec(self) -> PhotoSpec:
        return spec_of_config(self.cfg, uses_person=True)

    def reduced_features(self, im: torch.Tensor) -> torch.Tensor:
        """Backbone scales resized to f4, projected, summed and reduced: (B, reduced_dim, H/16, W/16)."""
        f3, f4, f5 = self.backbone(im)
        agg = self.f3_layer(resize_to(f3, f4)) + self.f4_layer(f4) + self.f5_layer(resize_to(f5, f4))
        return self.feat_ext(agg)

    def partition_features(
        self, red_feat: torch.Tensor, human_box: torch.Tensor, partition_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply the partition-aware module to the images that contain a person, each on its own.

        Every image goes through the module (no data-dependent indexing); images without a person
        keep their features and get a zero partition map.
        """
        if self.partition_aware is None:
            return red_feat, None
        batch = red_feat.shape[0]
        has_person = partition_mask[:, 4].flatten(1).ne(0).any(dim=1).view(batch, 1, 1, 1)
        human_xyxy = human_box.reshape(batch, -1)[:, -4:]
        image_index = torch.arange(batch, device=red_feat.device, dtype=human_xyxy.dtype).unsqueeze(1)
        fused, p_mean = self.partition_aware(red_feat, torch.cat([image_index, human_xyxy], dim=1), partition_mask)
        return (
            torch.where(has_person, fused.to(red_feat.dtype), red_feat),
            torch.where(has_person, p_mean.to(red_feat.dtype), 0.0),
        )

    def forward(
        self,
        image: torch.Tensor,
        crop_box: torch.Tensor,
        human_box: torch.Tensor | None = None,
        crop_valid: torch.Tensor | None = None,
        partition_mask: torch.Tensor | None = None,
    ) -> CropOutput:
        batch, height, width = image.shape[0], image.shape[-2], image.shape[-1]
        check_crop_box(crop_box, batch)
        if human_box is None:
            human_box = crop_box.new_full((batch, 1, 4), -1.0)
        if partition_mask is None:
            partition_mask = partition_masks(human_box.reshape(batch, 1, 4), width, height, FEATURE_STRIDE)
        count = crop_box.shape[1]
        rois = boxes_with_batch_index(crop_box)
        red_feat = self.reduced_features(image)
        red_feat, partition_feat = self.partition_features(red_feat, human_box, partition_mask)

        heat_map = None
        features = []
        if self.roi_feat_layer is not None:
            features.append(self.roi_feat_layer(self.crop_align(red_feat, rois)))
        if self.content_preserve is not None:
            heat_map = self.content_preserve.predict_heat_map(red_feat)
            rows, columns = crop_mask_factors(rois[:, 1:], width, height, (HEAT_MAP_SIZE, HEAT_MAP_SIZE))
            features.append(self.content_preserve.crop_features(heat_map, rows, columns, rois[:, 0].long()))
        crop_feat = features[0] if len(features) == 1 else torch.cat(features, dim=1)
        score = mask_padded_scores(self.fc_layer(crop_feat).reshape(batch, count), crop_valid)
        return CropOutput(score, heat_map, partition_feat)


# ----------------------------------------------------------------------------------------------
# GAIC baseline
# ----------------------------------------------------------------------------------------------


class GAICModel(GAICScorer):
    """GAIC's multi-scale shared-feature model (Zeng et al.) on our backbones
    (:class:`untils.crop_heads.GAICScorer`).

    Called like every crop model (``forward(image, crop_box, human_box=None, crop_valid=None)``);
    GAIC takes no person box, so ``human_box`` is not read. Returns a :class:`CropOutput` with
    scores only.
    """

    def __init__(self, cfg=None, loadweights: bool | None = None) -> None:
        if cfg is None:
            from config_GAICD import cfg
        pretrained = cfg.pretrained if loadweights is None else loadweights
        super().__init__(cfg, pretrained, CropAlignFeatures)
        self.cfg = cfg

    @property
    def photo_spec(self) -> PhotoSpec:
        return spec_of_config(self.cfg)

    def forward(
        self,
        image: torch.Tensor,
        crop_box: torch.Tensor,
        human_box: torch.Tensor | None = None,
        crop_valid: torch.Tensor | None = None,
    ) -> CropOutput:
        return CropOutput(self.objective_scores(image, crop_box, crop_valid))


# ----------------------------------------------------------------------------------------------
# GAIC's released model
# ----------------------------------------------------------------------------------------------


class GAICOfficialModel(nn.Module):
    """GAIC's ``crop_model_multi_scale_shared`` with the release's parameter names.

    ``forward(image, crop_box, human_box=None, crop_valid=None)``: ``image`` (B, 3, H, W) prepared
    by :func:`untils.preprocessing.gaic_preprocess`, ``crop_box`` (B, N, 4) ``[x1, y1, x2, y2]`` in its
    pixels, ``crop_valid`` (B, N) bool marking the real crops of a padded batch. Returns a
    :class:`CropOutput` whose ``score`` is (B, N), padded crops ``-inf``. GAIC takes no person box:
    ``human_box`` is accepted, like every crop model here, and not used.

    ``backbone_weight_path`` loads ImageNet weights in the release's layout into the backbone
    (``mobilenetv2_1.0-0c6065bc.pth``, ``shufflenetv2_x1_69.402_88.374.pth.tar``, torchvision's
    ``vgg16-397923af.pth``); without it the backbone starts from random init (a checkpoint then
    supplies every weight). Heads use PyTorch's default init, as the release's training does.
    """

    def __init__(
        self,
        backbone: str = "mobilenetv2",
        reduced_dim: int = 8,
        align_size: int = 9,
        dropout: bool = True,
        backbone_weight_path: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.Feat_ext = GAICBackbone(backbone, backbone_weight_path)
        self.DimRed = nn.Conv2d(sum(self.Feat_ext.channels), reduced_dim, kernel_size=1)
        self.crop_align = CropAlignFeatures(align_size, 1.0 / FEATURE_STRIDE)
        self.FC_layers = gaic_fc_layers(2 * reduced_dim, align_size, dropout)

    @property
    def photo_spec(self) -> PhotoSpec:
        """The spec of its config (set by :func:`load_crop_model` and :func:`build_crop_model`), else
        the release's input (``untils.preprocessing.GAIC_RELEASE_SPEC``)."""
        cfg = getattr(self, "cfg", None)
        return GAIC_RELEASE_SPEC if cfg is None else spec_of_config(cfg)

    def reduced_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, reduced_dim, H/16, W/16): the three scales brought to f4's size, concatenated, reduced."""
        return self.DimRed(release_scales(*self.Feat_ext(image)))

    def forward(
        self,
        image: torch.Tensor,
        crop_box: torch.Tensor,
        human_box: torch.Tensor | None = None,
        crop_valid: torch.Tensor | None = None,
    ) -> CropOutput:
        batch = image.shape[0]
        check_crop_box(crop_box, batch)
        rois = boxes_with_batch_index(crop_box.to(image.dtype))
        aligned = self.crop_align(self.reduced_features(image), rois)
        scores = self.FC_layers(aligned).reshape(batch, crop_box.shape[1])
        return CropOutput(mask_padded_scores(scores, crop_valid))


def is_official_gaic_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` is one of GAIC's release (also with DataParallel's ``module.`` prefix,
    and with the last conv at ``FC_layers.2`` or ``FC_layers.3``)."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        return False
    names = set(release_state_dict(dict(state_dict)))
    return (
        "DimRed.weight" in names
        and "FC_layers.0.0.weight" in names
        and any(name.startswith("Feat_ext.") for name in names)
        and ("FC_layers.2.weight" in names) != ("FC_layers.3.weight" in names)
    )


def official_gaic_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> GAICOfficialModel:
    """GAIC's released model built to fit ``state_dict`` (backbone, reduced_dim, align size and
    dropout read from its keys), its weights loaded strictly; on the CPU, in eval mode.

    Raises :class:`untils.checkpoint.CheckpointError` naming what does not fit.
    """
    if not is_official_gaic_state_dict(state_dict):
        raise CheckpointError(
            "not a state_dict of GAIC's release (expected Feat_ext.*, DimRed.* and FC_layers.* "
            "with the last conv at FC_layers.2 or FC_layers.3)"
        )
    state = release_state_dict(dict(state_dict))
    reduce_weight = state["DimRed.weight"]
    by_channels = {sum(channels): name for name, channels in BACKBONE_CHANNELS.items()}
    backbone = by_channels.get(reduce_weight.shape[1])
    if backbone is None:
        known = ", ".join(f"{channels} ({name})" for channels, name in sorted(by_channels.items()))
        raise CheckpointError(
            f"GAIC state_dict with DimRed over {reduce_weight.shape[1]} channels: its backbone is "
            f"not supported (known: {known})"
        )
    model = GAICOfficialModel(
        backbone,
        reduced_dim=reduce_weight.shape[0],
        align_size=state["FC_layers.0.0.weight"].shape[-1],
        dropout="FC_layers.3.weight" in state,
    )
    load_model_weights(model, {"model": with_batch_counters(model, state)})
    return model.eval()


def build_crop_model(cfg, model_type: str = "HCIC", loadweights: bool | None = None) -> nn.Module:
    """``HCIC`` (human-centric), ``GAIC`` (baseline), ``GAIC-official`` (GAIC's release) or ``PIC``
    (personalized, ``pic_model``) from a config."""
    if model_type == "HCIC":
        return HumanCentricCroppingModel(cfg, loadweights=loadweights)
    if model_type == "GAIC":
        return GAICModel(cfg, loadweights=loadweights)
    if model_type == "GAIC-official":
        pretrained = cfg.pretrained if loadweights is None else loadweights
        if pretrained and not cfg.backbone_weight_path:
            raise BackboneWeightsError(
                "GAIC-official takes its ImageNet weights from the release's file: pass "
                "--backbone_weight_path (e.g. mobilenetv2_1.0-0c6065bc.pth), or --pretrained "
                "false"
            )
        model = GAICOfficialModel(
            cfg.backbone, cfg.reduced_dim, backbone_weight_path=cfg.backbone_weight_path if pretrained else None
        )
        model.cfg = cfg
        return model
    if model_type == "PIC":
        return PICModel(cfg, loadweights=loadweights)
    raise ValueError(f"model_type={model_type!r}; expected 'HCIC', 'GAIC', 'GAIC-official' or 'PIC'")


def official_pic_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], overrides: dict | None = None
) -> PICOfficialModel:
    """PIC's released model built to fit ``state_dict`` (backbone, reduced_dim, align size, users,
    positions, position head and attention read from its keys), weights loaded strictly; CPU, eval
    mode. ``model.cfg`` is a ``config_PIC.Config`` of the official variant fed BGR photos (the
    release's cv2 input), ``overrides`` winning.

    Raises :class:`untils.checkpoint.CheckpointError` naming what does not fit.
    """
    state = release_state_dict(dict(state_dict))
    options = {**official_pic_options(state), "channel_order": "bgr"}
    cfg = config_from_checkpoint({"config": options}, config_PIC.Config, overrides)
    model = build_official_model(cfg)
    load_model_weights(model, {"model": with_batch_counters(model, state)})
    return model.eval()


def load_crop_model(
    source: str | os.PathLike | dict,
    device: str | torch.device = "cpu",
    overrides: dict | None = None,
    trusted: bool = False,
    channel_order: str | None = None,
) -> nn.Module:
    """Any crop model the project knows, with its weights, in eval mode on ``device``: the one
    loader of every checkpoint kind.

    ``source`` is a checkpoint path or its loaded content: our checkpoints of every model type
    (``{"model": state_dict, "config": ..., "model_type": ...}``; PIC's of both variants), a bare
    state_dict of the HCIC release (early key names included), of GAIC's release
    (:class:`GAICOfficialModel`) or of PIC's (:class:`pic_model.PICOfficialModel`), the last two
    also with DataParallel's ``module.`` prefix. The model's config is ``model.cfg``: the stored
    options, the defaults (for GAIC's release, its preprocessing) for a bare state_dict, with
    ``overrides`` (e.g. data paths) winning.
    ``trusted`` loads a file that needs more than plain tensors and data (unsafe: it may run code).
    ``channel_order`` (rgb or bgr) is the order the model's photos are given in (its ``photo_spec``):
    None keeps its own (bgr for PIC's release files and official PIC checkpoints trained so, rgb
    for every other model, the only order those take).
    """
    if channel_order not in (None, *CHANNEL_ORDERS):
        raise ValueError(f"channel order {channel_order!r}: expected one of {', '.join(CHANNEL_ORDERS)}")
    model = _load_any(source, overrides, trusted)
    if isinstance(model, PICOfficialModel) and channel_order is not None:
        model.cfg.channel_order = channel_order
    elif channel_order == "bgr":
        raise CheckpointError(
            f"channel order bgr: only official PIC models (PIC's release) take cv2's BGR order; "
            f"this {type(model).__name__} takes rgb"
        )
    return model.to(device).eval()


def _load_any(source: str | os.PathLike | dict, overrides: dict | None, trusted: bool) -> nn.Module:
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "checkpoint"
    content = read_checkpoint(name, trusted=trusted) if isinstance(source, (str, os.PathLike)) else source
    if "model" not in content:
        content = {"model": content}
    if "model_type" not in content and is_official_gaic_state_dict(content["model"]):
        gaic = official_gaic_from_state_dict(content["model"])
        gaic.cfg = config_from_checkpoint(
            {
                "config": {
                    "model_type": "GAIC-official",
                    "backbone": gaic.backbone_name,
                    "reduced_dim": gaic.DimRed.out_channels,
                    "image_preprocessing": "gaic",
                    "keep_aspect_ratio": True,
                    "image_size": (256, 256),
                    "use_partition_aware": False,
                    "use_content_preserve": False,
                }
            },
            Config,
            overrides,
        )
        return gaic
    if "model_type" not in content and is_official_pic_state_dict(content["model"]):
        return official_pic_from_state_dict(content["model"], overrides)
    model_type = content.get("model_type", "HCIC")
    if model_type == "PIC":
        return pic_model_from_checkpoint(content, overrides)
    if model_type not in ("HCIC", "GAIC", "GAIC-official"):
        raise CheckpointError(f"{name}: unknown model_type {model_type!r}")
    cfg = config_from_checkpoint(content, Config, {**(overrides or {}), "model_type": model_type}, name)
    model = build_crop_model(cfg, model_type, loadweights=False)
    load_model_weights(model, content)
    return model


def crop_score_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    loss_types: Sequence[str],
    crop_valid: torch.Tensor | None = None,
    score_mean: float = MOS_MEAN,
    rank_loss_weighting: str = "sign",
    over_batch: bool = False,
) -> torch.Tensor:
    """Sum of the chosen score losses over the valid crops: per image, averaged over images, or
    (``over_batch``, the HCIC release's CPC training) once over all the batch's crops together."""
    if pred.dim() == 1:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
        crop_valid = None if crop_valid is None else crop_valid.unsqueeze(0)
    if crop_valid is None:  # every crop counts: no boolean indexing, which would wait for the device
        groups = [(pred.reshape(-1), gt.reshape(-1))] if over_batch else list(zip(pred, gt, strict=True))
    elif over_batch:
        groups = [(pred[crop_valid], gt[crop_valid])]
    else:
        groups = [(pred[image][crop_valid[image]], gt[image][crop_valid[image]]) for image in range(pred.shape[0])]
    total = pred.new_zeros(())
    for p, g in groups:
        total = total + group_score_loss(p, g, loss_types, score_mean, rank_loss_weighting)
    return total / len(groups)


def crop_training_loss(
    output: CropOutput, batch: dict, cfg, score_mean: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of the cropping recipes and its parts (detached, on the device: reading them
    back is left to the logging): the score losses of ``cfg.loss_type``
    (in fp32, over each image's valid crops) plus ``cfg.content_loss_weight`` x L1 between the
    predicted heat map and the pseudo heat map, on the images that have one."""
    target = (batch["score"] - MOS_MEAN) / MOS_STD if cfg.normalize_scores else batch["score"]
    # with every crop valid (one image per step) no mask: indexing by one would wait for the device
    crop_valid = None if batch.get("all_crops_valid") else batch["crop_valid"]
    score_loss = crop_score_loss(
        output.score.float(),
        target,
        cfg.loss_type,
        crop_valid,
        score_mean=score_mean,
        rank_loss_weighting=cfg.rank_loss_weighting,
        over_batch=cfg.score_loss_over == "batch",
    )
    loss = score_loss
    parts = {"score_loss": score_loss.detach()}
    heat_map = output.heat_map
    if heat_map is not None and cfg.use_content_preserve:
        has_target = batch.get("has_heat_map")
        target = batch["heat_map"]
        if has_target is not None and not bool(has_target.all()):
            keep = has_target.to(heat_map.device)
            heat_map, target = heat_map[keep], target[keep]
        if heat_map.numel():
            content_loss = F.l1_loss(heat_map.reshape(-1).float(), target.reshape(-1).float())
            loss = loss + cfg.content_loss_weight * content_loss
            parts["content_loss"] = content_loss.detach()
    parts["total_loss"] = loss.detach()
    return loss, parts
