"""Crop-scoring models: the human-centric model (ECCV 2022), the GAIC baseline, and their losses.

Both models share one backbone builder (:func:`build_backbone`, three feature scales) and one
RoI/RoD feature extractor (:class:`CropAlignFeatures`). Parameter names and shapes of
:class:`HumanCentricCroppingModel` are those of the official release, so its checkpoints load with
``strict=True``. Differences from the release, each a bug fix:

* whether an image contains a person is decided per image, not from the first image of the batch;
* ``use_rod_feature=False`` really removes the RoD branch (the release ignored the switch);
* the graph-reasoning similarity cannot divide by a zero norm;
* padded crops of a multi-image batch (``crop_valid``) are never scored: their score is ``-inf``;
* the pairwise rank loss uses ``sign`` of the score difference as GAIC does (the release's
  ``sin`` is available as ``rank_loss_weighting="sin"`` for reproducing its numbers).
"""
from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from roi_align import RoIAlignAvg
from rod_align import RoDAlignAvg
from untils.boxes import crop_masks
from untils.torchvision_compat import models

ALIGN_SIZE = 9
FEATURE_STRIDE = 16  # RoI/RoD features are taken from f4, at 1/16 of the input
CONTENT_FEAT_DIM = 256
HEAT_MAP_SIZE = 64
MOS_MEAN = 2.95  # GAICD mean opinion score, used by the score-weighted regression loss
# Crops whose content features are computed together: bounds the memory of the per-crop maps (FCDB
# and FLMS score 1,745 anchors per image).
CROP_CHUNK = 512
# On the CPU, crops whose first-layer maps (60x60x64 floats each, ~0.9 MB) are built and pooled
# together: a sub-chunk stays in the cache between the two passes over it.
CPU_FIRST_LAYER_CHUNK = 8

# torchvision constructor, ImageNet weights enum, and the channels of f3, f4, f5.
_BACKBONES = {
    "vgg16": ("vgg16", "VGG16_Weights", (512, 512, 512)),
    "resnet50": ("resnet50", "ResNet50_Weights", (512, 1024, 2048)),
    "mobilenetv2": ("mobilenet_v2", "MobileNet_V2_Weights", (32, 96, 320)),
    "shufflenetv2": ("shufflenet_v2_x1_0", "ShuffleNet_V2_X1_0_Weights", (116, 232, 464)),
}


class CropOutput(NamedTuple):
    """What every crop model returns: ``score`` (B, N), padded crops ``-inf``; the human-centric
    model's ``heat_map`` (B, 1, 64, 64) and ``partition_feat`` (B, P, H/16, W/16), None elsewhere."""
    score: torch.Tensor
    heat_map: Optional[torch.Tensor] = None
    partition_feat: Optional[torch.Tensor] = None


class BackboneWeightsError(RuntimeError):
    """ImageNet weights were asked for but cannot be loaded."""


def _imagenet_model(name: str, weight_path: Optional[str]) -> nn.Module:
    constructor_name, weights_enum_name, _ = _BACKBONES[name]
    constructor = getattr(models, constructor_name)
    if weight_path is not None:
        if not os.path.isfile(weight_path):
            raise BackboneWeightsError(f"backbone weight file {weight_path!r} does not exist")
        model = constructor(weights=None)
        state = torch.load(weight_path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise BackboneWeightsError(
                f"{weight_path!r} is not a torchvision {constructor_name} ImageNet state_dict: {error}") from error
        return model
    weights = getattr(models, weights_enum_name).IMAGENET1K_V1
    try:
        return constructor(weights=weights)
    except Exception as error:  # offline, proxy, corrupt cache: all end the same way for the user
        raise BackboneWeightsError(
            f"could not load ImageNet weights for {name} through torchvision ({type(error).__name__}: "
            f"{error}). Download {weights.url} and pass it with --backbone_weight_path PATH, "
            f"place it in torch's hub cache ({torch.hub.get_dir()}/checkpoints), "
            f"or train from random init with --pretrained false") from error


class Backbone(nn.Module):
    """A CNN cut into three stages giving features at strides 8 (f3), 16 (f4) and 32 (f5)."""

    def __init__(self, feature3: nn.Module, feature4: nn.Module, feature5: nn.Module,
                 channels: Sequence[int]) -> None:
        super().__init__()
        self.feature3 = feature3
        self.feature4 = feature4
        self.feature5 = feature5
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f3 = self.feature3(x)
        f4 = self.feature4(f3)
        f5 = self.feature5(f4)
        return f3, f4, f5


def build_backbone(name: str, pretrained: bool = True, weight_path: Optional[str] = None) -> Backbone:
    """Build ``name`` (vgg16, resnet50, mobilenetv2, shufflenetv2) cut into three scales.

    With ``pretrained`` the ImageNet weights come from ``weight_path`` or torchvision's weights
    API; if neither works a :class:`BackboneWeightsError` says how to fix it. Module names follow
    the official release (``feature3.0.<index>`` for vgg16), so its checkpoints load.
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(_BACKBONES)}")
    if pretrained:
        net = _imagenet_model(name, weight_path)
    else:
        net = getattr(models, _BACKBONES[name][0])(weights=None)
    channels = _BACKBONES[name][2]
    if name == "vgg16":
        stages = (nn.Sequential(net.features[:23]), nn.Sequential(net.features[23:30]),
                  nn.Sequential(net.features[30:]))
    elif name == "resnet50":
        stages = (nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2),
                  nn.Sequential(net.layer3), nn.Sequential(net.layer4))
    elif name == "mobilenetv2":
        stages = (nn.Sequential(net.features[:7]), nn.Sequential(net.features[7:14]),
                  nn.Sequential(net.features[14:-1]))
    else:
        stages = (nn.Sequential(net.conv1, net.maxpool, net.stage2), nn.Sequential(net.stage3),
                  nn.Sequential(net.stage4))
    return Backbone(*stages, channels=channels)


def resize_to(feature: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    if feature.shape[-2:] == reference.shape[-2:]:
        return feature
    return F.interpolate(feature, size=reference.shape[-2:], mode="bilinear", align_corners=True)


def boxes_with_batch_index(boxes: torch.Tensor) -> torch.Tensor:
    """(B, N, 4) boxes -> (B*N, 5) rows ``(batch_index, x1, y1, x2, y2)``; (K, 5) passes through."""
    if boxes.dim() == 2:
        if boxes.shape[-1] != 5:
            raise ValueError(f"boxes of shape {tuple(boxes.shape)}: expected (B, N, 4) or (K, 5)")
        return boxes
    if boxes.dim() != 3 or boxes.shape[-1] not in (4, 5):
        raise ValueError(f"boxes of shape {tuple(boxes.shape)}: expected (B, N, 4) or (K, 5)")
    if boxes.shape[-1] == 5:
        return boxes.reshape(-1, 5)
    batch, count, _ = boxes.shape
    index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype).view(batch, 1, 1).expand(batch, count, 1)
    return torch.cat([index, boxes], dim=-1).reshape(-1, 5)


class CropAlignFeatures(nn.Module):
    """RoIAlign (inside the crop) and RoDAlign (what the crop discards) features of each crop.

    Output ``(K, C * (2 if use_rod else 1), align, align)``; shared by every crop scorer.
    """

    def __init__(self, align_size: int = ALIGN_SIZE, spatial_scale: float = 1.0 / FEATURE_STRIDE,
                 use_rod: bool = True) -> None:
        super().__init__()
        self.RoIAlign = RoIAlignAvg(align_size, align_size, spatial_scale)
        self.RoDAlign = RoDAlignAvg(align_size, align_size, spatial_scale) if use_rod else None

    def forward(self, feature_map: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        roi_feat = self.RoIAlign(feature_map, rois)
        if self.RoDAlign is None:
            return roi_feat
        return torch.cat([roi_feat, self.RoDAlign(feature_map, rois)], dim=1)


def mask_padded_scores(scores: torch.Tensor, crop_valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Scores (B, N) with the padded crops of a batch (``crop_valid`` False) at ``-inf``.

    The human-centric and GAIC models score padded crops like the others and discard them here:
    no data-dependent shapes, hence no host-device synchronisation and one graph under
    torch.compile.
    """
    return scores if crop_valid is None else scores.masked_fill(~crop_valid, float("-inf"))


def scatter_valid_scores(valid_scores: torch.Tensor, crop_valid: Optional[torch.Tensor],
                         batch: int, count: int) -> torch.Tensor:
    """Place the scores of valid crops in a (B, N) tensor; padded crops get ``-inf``."""
    if crop_valid is None:
        return valid_scores.reshape(batch, count)
    scores = valid_scores.new_full((batch * count,), float("-inf"))
    scores[crop_valid.reshape(-1)] = valid_scores.reshape(-1)
    return scores.reshape(batch, count)


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

    def forward(self, x: torch.Tensor, human_rois: torch.Tensor,
                partition_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


class GraphReasoningModule(nn.Module):
    """Graph reasoning over feature-map positions: cosine-similarity softmax, then a projection."""

    def __init__(self, in_dim: int, inter_dim: int, out_dim: int) -> None:
        super().__init__()
        self.phi = nn.Linear(in_dim, inter_dim, bias=False)
        self.theta = nn.Linear(in_dim, inter_dim, bias=False)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, feat_map: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = feat_map.shape
        nodes = feat_map.flatten(2).transpose(1, 2)  # (B, HW, C)
        phi, theta = self.phi(nodes), self.theta(nodes)
        product = phi @ theta.transpose(1, 2)
        norms = phi.norm(dim=-1, keepdim=True) @ theta.norm(dim=-1, keepdim=True).transpose(1, 2)
        similarity = torch.softmax(product / norms.clamp_min(1e-12), dim=-1)
        out = (similarity @ nodes) @ self.weight  # (B, HW, out_dim)
        return F.relu(out.transpose(1, 2).reshape(batch, -1, height, width))


class BoxMasks(NamedTuple):
    """Crop masks that are boxes, factored: ``mask[k] = outer(rows[k], columns[k])``, 0/1 floats.

    They are the masks ``untils.boxes.crop_masks`` rasterises, kept as their row (K, 64) and column
    (K, 64) indicators, which lets the content feature skip the per-crop convolution of the mask.
    """
    rows: torch.Tensor
    columns: torch.Tensor

    @classmethod
    def from_boxes(cls, boxes: torch.Tensor, width: int, height: int) -> "BoxMasks":
        """The factored ``crop_masks`` of boxes (K, 4) in input pixels of a ``width`` x ``height`` image."""
        masks = crop_masks(boxes, width, height, (HEAT_MAP_SIZE, HEAT_MAP_SIZE))
        return cls(masks.amax(dim=-1), masks.amax(dim=-2))


CropMasks = Union[torch.Tensor, BoxMasks]


class ContentPreserveModule(nn.Module):
    """Predicts a heat map of content a good crop keeps, and a feature of each crop's mask on it."""

    def __init__(self, in_dim: int, inter_dim: int, out_dim: int, mode: str = "gcn") -> None:
        super().__init__()
        if mode == "conv":
            self.relation_encoder = nn.Sequential(
                nn.Conv2d(in_dim, in_dim, kernel_size=3, padding=1), nn.ReLU(True),
                nn.Conv2d(in_dim, inter_dim, kernel_size=1))
        elif mode == "gcn":
            self.relation_encoder = GraphReasoningModule(in_dim, in_dim, inter_dim)
        else:
            raise ValueError(f"content_preserve_type={mode!r}; expected 'gcn' or 'conv'")
        self.preserve_predict = nn.Sequential(
            nn.Upsample(size=(HEAT_MAP_SIZE, HEAT_MAP_SIZE), mode="bilinear", align_corners=True),
            nn.Conv2d(inter_dim, inter_dim, kernel_size=3, padding=1), nn.ReLU(True),
            nn.Conv2d(inter_dim, 1, kernel_size=1), nn.Sigmoid())
        # No non-linearity between these layers, as in the release (parameter indices match it).
        self.content_feat_layer = nn.Sequential(
            nn.Conv2d(2, 64, kernel_size=5), nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(64, 32, kernel_size=5), nn.MaxPool2d(kernel_size=2),
            nn.Flatten(1), nn.Linear(32 * 13 * 13, out_dim))

    def predict_heat_map(self, feat_map: torch.Tensor) -> torch.Tensor:
        return self.preserve_predict(self.relation_encoder(feat_map))

    def crop_features(self, heat_map: torch.Tensor, crop_mask: CropMasks, image_index: torch.Tensor) -> torch.Tensor:
        """Content feature (K, out_dim) of each crop: ``content_feat_layer`` on [its image's heat map, its mask].

        ``heat_map`` (B, 1, 64, 64); ``crop_mask`` (K, 64, 64) or :class:`BoxMasks`; ``image_index``
        (K,) the image of each crop. The first convolution is linear, so it is split exactly: its
        heat-map half (with the bias) runs once per image, and its mask half is, for general masks, a
        one-channel convolution per crop, and for box masks a sum of kernel weights over the box,
        separable in rows and columns (no convolution at all). Only the pooling, the second
        convolution and the linear layer see each crop. The first-layer maps are kept channels-last
        (the CPU's max pooling is several times faster so); crops go ``CROP_CHUNK`` at a time.
        """
        first, pool = self.content_feat_layer[0], self.content_feat_layer[1]
        heat_term = F.conv2d(heat_map, first.weight[:, :1], first.bias).permute(0, 2, 3, 1).contiguous()
        count = image_index.shape[0]
        if count == 0:
            return heat_term.new_zeros(0, self.content_feat_layer[-1].out_features)
        step = CPU_FIRST_LAYER_CHUNK if heat_map.device.type == "cpu" else CROP_CHUNK
        features = []
        for start in range(0, count, CROP_CHUNK):
            stop = min(start + CROP_CHUNK, count)
            if isinstance(crop_mask, BoxMasks):
                add_mask_term = self._box_mask_term(crop_mask.rows[start:stop], crop_mask.columns[start:stop],
                                                    heat_term.dtype)
            else:
                add_mask_term = self._mask_convolution_term(crop_mask[start:stop])
            pooled = []
            for begin in range(0, stop - start, step):
                end = min(begin + step, stop - start)
                maps = heat_term.index_select(0, image_index[start + begin:start + end])  # (k, h, w, C), fresh
                add_mask_term(maps, begin, end)
                pooled.append(pool(maps.permute(0, 3, 1, 2)))
            features.append(self.content_feat_layer[2:](torch.cat(pooled)))
        return torch.cat(features)

    def _box_mask_term(self, rows: torch.Tensor, columns: torch.Tensor,
                       dtype: torch.dtype) -> Callable[[torch.Tensor, int, int], None]:
        """For the box masks outer(rows[k], columns[k]) of a chunk of crops: a function that adds the
        first convolution's mask half of the chunk's crops ``begin:end`` to their maps (k, h, w, C).

        sum_ij W[o,i,j] r[y+i] c[x+j] = sum_j c[x+j] (sum_i r[y+i] W[o,i,j]): the row sums and column
        windows are built once per chunk; each call is one batched product (few, long operations).
        """
        kernel = self.content_feat_layer[0].weight[:, 1].to(dtype)  # (C, s, s)
        size = kernel.shape[-1]
        row_windows = rows.to(dtype).unfold(1, size, 1)  # (k, h, s): r[y + i]
        column_windows = columns.to(dtype).unfold(1, size, 1)  # (k, w, s): c[x + j]
        crops, height, width = row_windows.shape[0], row_windows.shape[1], column_windows.shape[1]
        row_sums = torch.einsum("kyi,oij->kyjo", row_windows, kernel).reshape(crops * height, size, -1)
        columns_per_row = column_windows.unsqueeze(1).expand(crops, height, width, size).reshape(-1, width, size)

        def add(maps: torch.Tensor, begin: int, end: int) -> None:
            rows_of_crops = slice(begin * height, end * height)
            maps.view(-1, width, maps.shape[-1]).baddbmm_(columns_per_row[rows_of_crops], row_sums[rows_of_crops])
        return add

    def _mask_convolution_term(self, masks: torch.Tensor) -> Callable[[torch.Tensor, int, int], None]:
        """For general masks (k, 64, 64) of a chunk of crops: a function that adds the first
        convolution's mask half of the chunk's crops ``begin:end`` to their maps (k, h, w, C)."""
        kernel = self.content_feat_layer[0].weight[:, 1:]

        def add(maps: torch.Tensor, begin: int, end: int) -> None:
            maps += F.conv2d(masks[begin:end].unsqueeze(1).to(maps.dtype), kernel).permute(0, 2, 3, 1)
        return add


class HumanCentricCroppingModel(nn.Module):
    """The human-centric cropping model (Zhang et al., ECCV 2022).

    ``forward(im, crop_box, human_box, crop_mask, partition_mask)`` with ``im`` (B,3,H,W),
    ``crop_box`` (B,N,4) in input pixels, ``human_box`` (B,1,4) (-1s when there is no person),
    ``crop_mask`` (B,N,64,64), ``partition_mask`` (B,9,H/16,W/16) returns
    ``(partition_feat, heat_map, score)``: (B,P,H/16,W/16), (B,1,64,64), (B,N).
    ``crop_valid`` (B,N) bool marks the real crops of a padded batch. ``crop_mask=None`` means
    the boxes' own masks (``untils.boxes.crop_masks`` of ``crop_box`` in the input's size, what
    every dataset here builds): they are then never rasterised per crop, which is much faster.
    """

    def __init__(self, cfg=None, loadweights: Optional[bool] = None) -> None:
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
        self.partition_aware = (PartitionAwareModule(reduce_dim, cfg.partition_aware_type, cfg.concat_with_human)
                                if cfg.use_partition_aware else None)
        self.content_preserve = (ContentPreserveModule(reduce_dim, 8, CONTENT_FEAT_DIM, cfg.content_preserve_type)
                                 if cfg.use_content_preserve else None)
        self.only_content = bool(cfg.use_content_preserve and cfg.only_content_preserve)
        self.crop_align = CropAlignFeatures(ALIGN_SIZE, 1.0 / FEATURE_STRIDE, cfg.use_rod_feature)
        align_dim = reduce_dim * (2 if cfg.use_rod_feature else 1)
        fc1_dim, fc2_dim = 512, 256
        if self.only_content:
            self.roi_feat_layer = None
            head_dim = CONTENT_FEAT_DIM
        else:
            self.roi_feat_layer = nn.Sequential(
                nn.Conv2d(align_dim, fc1_dim, kernel_size=ALIGN_SIZE), nn.ReLU(True), nn.Flatten(1),
                nn.Linear(fc1_dim, fc2_dim, bias=False))
            head_dim = fc2_dim + (CONTENT_FEAT_DIM if self.content_preserve is not None else 0)
        self.fc_layer = nn.Linear(head_dim, 1)

    def reduced_features(self, im: torch.Tensor) -> torch.Tensor:
        """Backbone scales resized to f4, projected, summed and reduced: (B, reduced_dim, H/16, W/16)."""
        f3, f4, f5 = self.backbone(im)
        agg = self.f3_layer(resize_to(f3, f4)) + self.f4_layer(f4) + self.f5_layer(resize_to(f5, f4))
        return self.feat_ext(agg)

    def partition_features(self, red_feat: torch.Tensor, human_box: torch.Tensor,
                           partition_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the partition-aware module to the images that contain a person, each on its own.

        Every image goes through the module (no data-dependent indexing); images without a person
        keep their features and get a zero partition map.
        """
        if self.partition_aware is None:
            return red_feat, torch.zeros_like(partition_mask)
        batch = red_feat.shape[0]
        has_person = partition_mask[:, 4].flatten(1).ne(0).any(dim=1).view(batch, 1, 1, 1)
        human_xyxy = human_box.reshape(batch, -1)[:, -4:]
        image_index = torch.arange(batch, device=red_feat.device, dtype=human_xyxy.dtype).unsqueeze(1)
        fused, p_mean = self.partition_aware(red_feat, torch.cat([image_index, human_xyxy], dim=1), partition_mask)
        return (torch.where(has_person, fused.to(red_feat.dtype), red_feat),
                torch.where(has_person, p_mean.to(red_feat.dtype), 0.0))

    def forward(self, im: torch.Tensor, crop_box: torch.Tensor, human_box: torch.Tensor,
                crop_mask: Optional[torch.Tensor], partition_mask: torch.Tensor,
                crop_valid: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = im.shape[0]
        if crop_box.dim() != 3 or crop_box.shape[0] != batch or crop_box.shape[-1] != 4:
            raise ValueError(f"crop_box of shape {tuple(crop_box.shape)}: expected ({batch}, N, 4)")
        count = crop_box.shape[1]
        rois = boxes_with_batch_index(crop_box)
        if crop_mask is not None:
            crop_mask = crop_mask.reshape(batch * count, *crop_mask.shape[-2:])
        red_feat = self.reduced_features(im)
        red_feat, part_feat = self.partition_features(red_feat, human_box, partition_mask)

        heat_map = red_feat.new_zeros(batch, 1, HEAT_MAP_SIZE, HEAT_MAP_SIZE)
        features = []
        if self.roi_feat_layer is not None:
            features.append(self.roi_feat_layer(self.crop_align(red_feat, rois)))
        if self.content_preserve is not None:
            heat_map = self.content_preserve.predict_heat_map(red_feat)
            masks = BoxMasks.from_boxes(rois[:, 1:], im.shape[-1], im.shape[-2]) if crop_mask is None else crop_mask
            features.append(self.content_preserve.crop_features(heat_map, masks, rois[:, 0].long()))
        crop_feat = features[0] if len(features) == 1 else torch.cat(features, dim=1)
        score = mask_padded_scores(self.fc_layer(crop_feat).reshape(batch, count), crop_valid)
        return part_feat, heat_map, score


# ----------------------------------------------------------------------------------------------
# GAIC baseline
# ----------------------------------------------------------------------------------------------

def gaic_head(in_dim: int, align_size: int = ALIGN_SIZE) -> nn.Sequential:
    """GAIC's three-layer conv scoring head over aligned crop features."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_dim, 768, kernel_size=align_size), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(768, 128, kernel_size=1), nn.ReLU(inplace=True)),
        nn.Conv2d(128, 1, kernel_size=1))


class GAICModel(nn.Module):
    """GAIC's multi-scale shared-feature model (Zeng et al.): f3, f4 and f5/2 concatenated.

    ``forward(im, crop_box, crop_valid=None)`` returns (B, N) scores; extra arguments of the
    human-centric signature are accepted and ignored, so scripts can call both the same way.
    """

    def __init__(self, cfg=None, loadweights: Optional[bool] = None) -> None:
        super().__init__()
        if cfg is None:
            from config_GAICD import cfg
        self.cfg = cfg
        pretrained = cfg.pretrained if loadweights is None else loadweights
        self.backbone = build_backbone(cfg.backbone, pretrained, cfg.backbone_weight_path)
        self.DimRed = nn.Conv2d(sum(self.backbone.channels), cfg.reduced_dim, kernel_size=1)
        self.crop_align = CropAlignFeatures(ALIGN_SIZE, 1.0 / FEATURE_STRIDE, cfg.use_rod_feature)
        self.FC_layers = gaic_head(cfg.reduced_dim * (2 if cfg.use_rod_feature else 1))

    def reduced_features(self, im: torch.Tensor) -> torch.Tensor:
        f3, f4, f5 = self.backbone(im)
        return self.DimRed(torch.cat([resize_to(f3, f4), f4, 0.5 * resize_to(f5, f4)], dim=1))

    def forward(self, im: torch.Tensor, crop_box: torch.Tensor, *unused, crop_valid: Optional[torch.Tensor] = None,
                **unused_kwargs) -> torch.Tensor:
        rois = boxes_with_batch_index(crop_box)
        scores = self.FC_layers(self.crop_align(self.reduced_features(im), rois)).reshape(crop_box.shape[:2])
        return mask_padded_scores(scores, crop_valid)


def build_crop_model(cfg, model_type: str = "HCIC", loadweights: Optional[bool] = None) -> nn.Module:
    """``HCIC`` (human-centric), ``GAIC`` (baseline) or ``PIC`` (personalized, end of this file) from a config."""
    if model_type == "HCIC":
        return HumanCentricCroppingModel(cfg, loadweights=loadweights)
    if model_type == "GAIC":
        return GAICModel(cfg, loadweights=loadweights)
    if model_type == "PIC":
        return PICModel(cfg, loadweights=loadweights)
    raise ValueError(f"model_type={model_type!r}; expected 'HCIC', 'GAIC' or 'PIC'")


def weights_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for conv and linear layers (the release's init)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# Losses (one image's crops: 1-D tensors of predicted and ground-truth scores)
# ----------------------------------------------------------------------------------------------

def _flat_pair(pre_score: torch.Tensor, gt_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pre, gt = pre_score.reshape(-1), gt_score.reshape(-1).to(pre_score.dtype)
    if pre.shape != gt.shape:
        raise ValueError(f"predicted scores {tuple(pre_score.shape)} and ground truth {tuple(gt_score.shape)} differ")
    return pre, gt


def score_regression_loss(pre_score: torch.Tensor, gt_score: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 regression of the scores, averaged over crops."""
    pre, gt = _flat_pair(pre_score, gt_score)
    return F.smooth_l1_loss(pre, gt, reduction="mean")


def score_weighted_regression_loss(pre_score: torch.Tensor, gt_score: torch.Tensor,
                                   score_mean: float = MOS_MEAN) -> torch.Tensor:
    """Smooth-L1 regression weighted by exp(max(score - mean, 0)): good crops count more."""
    pre, gt = _flat_pair(pre_score, gt_score)
    weight = torch.exp((gt - score_mean).clamp(min=0, max=100))
    return torch.mean(weight * F.smooth_l1_loss(pre, gt, reduction="none"))


def score_rank_loss(pre_score: torch.Tensor, gt_score: torch.Tensor, weighting: str = "sign") -> torch.Tensor:
    """Pairwise rank loss: sum over pairs of max(0, -w(g_i - g_j) * ((p_i - p_j) - (g_i - g_j))) / pairs.

    ``w`` is ``sign`` (GAIC) or ``sin`` (what the human-centric release computes).
    """
    pre, gt = _flat_pair(pre_score, gt_score)
    count = pre.shape[0]
    if count < 2:
        return pre.sum() * 0
    pre_diff = pre[:, None] - pre[None, :]
    gt_diff = gt[:, None] - gt[None, :]
    if weighting == "sign":
        direction = torch.sign(gt_diff)
    elif weighting == "sin":
        direction = torch.sin(gt_diff)
    else:
        raise ValueError(f"rank loss weighting {weighting!r}; expected 'sign' or 'sin'")
    violation = torch.clamp(-direction * (pre_diff - gt_diff), min=0)
    return violation.sum() / (count * (count - 1) / 2)


def listwise_view_ranking_loss(pre_score: torch.Tensor, gt_score: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between softmax(predictions) and softmax(dense rank of the ground truth)."""
    pre, gt = _flat_pair(pre_score, gt_score)
    _, dense_rank = torch.unique(gt, sorted=True, return_inverse=True)
    target = torch.softmax(dense_rank.to(pre.dtype) + 1, dim=-1)
    return -(torch.log_softmax(pre, dim=-1) * target).sum()


def partition_ce_loss(pre_partition: torch.Tensor, gt_partition: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy between predicted partition logits and the 9-region mask (B,9,H,W)."""
    logits = pre_partition.permute(0, 2, 3, 1).reshape(-1, pre_partition.shape[1])
    labels = gt_partition.argmax(dim=1).reshape(-1)
    return F.cross_entropy(logits, labels)


def crop_score_loss(pred: torch.Tensor, gt: torch.Tensor, loss_types: Sequence[str],
                    crop_valid: Optional[torch.Tensor] = None, score_mean: float = MOS_MEAN,
                    rank_loss_weighting: str = "sign") -> torch.Tensor:
    """Sum of the chosen score losses, computed per image over its valid crops, averaged over images."""
    if pred.dim() == 1:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
        crop_valid = None if crop_valid is None else crop_valid.unsqueeze(0)
    total = pred.new_zeros(())
    for image in range(pred.shape[0]):
        p, g = pred[image], gt[image]
        if crop_valid is not None:
            p, g = p[crop_valid[image]], g[crop_valid[image]]
        for loss_type in loss_types:
            if loss_type == "L1Loss":
                total = total + score_regression_loss(p, g)
            elif loss_type == "WeightedL1Loss":
                total = total + score_weighted_regression_loss(p, g, score_mean)
            elif loss_type == "RankLoss":
                total = total + score_rank_loss(p, g, rank_loss_weighting)
            elif loss_type == "LVRLoss":
                total = total + listwise_view_ranking_loss(p, g)
            else:
                raise ValueError(f"unknown score loss {loss_type!r}")
    return total / pred.shape[0]


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Personalized image cropping (PIC)
# ----------------------------------------------------------------------------------------------
# "Crop the Way You Like: Personalized Image Cropping by Integrating Subjective and Objective
# Features". One backbone feeds two branches: the objective branch is GAIC's head on RoI+RoD
# features (the generic model), the subjective branch describes crops so that users can be told
# apart (trained by classifying which user chose a crop). The individual preference module embeds
# a user from the subjective features of the user's best crops and adds a user-specific
# preference to the objective score. Explicit crop geometry (the crop in the image, and the
# person in the crop) feeds both the subjective branch and the preference module.

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

    ``forward`` is GAIC's: the objective (generic) scores (B, N). ``score_for_user(batch, user)``
    adds the user's preference; a user's embedding comes from ``user_embeddings`` (filled from a
    checkpoint by :func:`load_pic_model`). ``cfg.num_users`` > 0 adds the user classifier that
    pre-training trains the subjective branch with.
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
            raise KeyError(f"no embedding for user {user!r} in this PIC model (users: {known})")
        return self.user_embeddings[user]

    @torch.no_grad()
    def score_for_user(self, batch: dict, user: str) -> torch.Tensor:
        """Scores (B, N) of a collated batch (image, crop_box, human_box, optional crop_valid) for ``user``.

        Padded crops score ``-inf``, as in every crop model here.
        """
        crop_box, crop_valid = batch["crop_box"], batch.get("crop_valid")
        objective, features, _ = self.crop_outputs(batch["image"], crop_box, batch["human_box"], crop_valid)
        embedding = self.embedding_of(user).to(features)
        return scatter_valid_scores(objective + self.preference(features, embedding), crop_valid, *crop_box.shape[:2])


def prior_pull_loss(current: Sequence[torch.Tensor], prior: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean squared distance of fine-tuned tensors from their prior values, summed over tensors."""
    return sum(torch.mean((now - before.detach()) ** 2) for now, before in zip(current, prior))


def load_pic_model(checkpoint, device: torch.device | str = "cpu") -> PICModel:
    """A PIC model (eval mode, on ``device``) from a checkpoint path or dict of prior_PIC.py or finetune_PIC.py.

    Its ``user_embeddings`` hold every user the checkpoint knows: the prior's training users, or
    the fine-tuned user; score with ``model.score_for_user(batch, user)``.
    """
    from config_PIC import Config
    from untils.checkpoint import CheckpointError, config_from_checkpoint, load_model_weights, read_checkpoint

    source = checkpoint if isinstance(checkpoint, str) else "checkpoint"
    content = read_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    if content.get("model_type") != "PIC":
        raise CheckpointError(f"{source} is not a PIC checkpoint (model_type={content.get('model_type')!r})")
    model = PICModel(config_from_checkpoint(content, Config), loadweights=False)
    load_model_weights(model, content)
    model.user_embeddings = {user: torch.as_tensor(vector, dtype=torch.float32)
                             for user, vector in content.get("user_embeddings", {}).items()}
    return model.to(device).eval()
