"""GAIC's published model: ``crop_model_multi_scale_shared`` of the official PyTorch release.

Zeng et al., "Grid Anchor based Image Cropping" (CVPR 2019, TPAMI); release
HuiZeng/Grid-Anchor-based-Image-Cropping-Pytorch. Module and parameter names are the release's
(``Feat_ext.feature3/4/5``, ``DimRed``, ``FC_layers``), so its checkpoints (e.g.
``mobilenet_0.625_..._0.806.pth``) load with ``strict=True``:

* backbone: the release's MobileNetV2 (tonylins layout, with BatchNorm), ShuffleNetV2 (x1.0) or
  torchvision's VGG16, cut into f3 (1/8), f4 (1/16) and f5 (1/32);
* features ``cat(bilinear-down(f3), f4, 0.5 * bilinear-up(f5))`` (``nn.UpsamplingBilinear2d``,
  i.e. align_corners=True) -> ``DimRed`` (1x1 conv);
* RoIAlignAvg + RoDAlignAvg at 1/16 -> ``FC_layers``: conv (align x align) -> 768, ReLU; 1x1 -> 128,
  ReLU; dropout; 1x1 -> 1. The release's ``fc_layers`` names a dropout whose definition is
  commented out; checkpoints trained with ``nn.Dropout`` have the last conv at ``FC_layers.3``,
  ones without at ``FC_layers.2``; both are built here.

:func:`official_gaic_from_state_dict` builds the right variant from a state_dict's keys, and
:func:`gaic_preprocess` prepares a photo exactly as the release's test code does.
"""
from __future__ import annotations

from typing import Mapping, Optional

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cropping_model import (BackboneWeightsError, CropAlignFeatures, CropOutput, boxes_with_batch_index,
                            mask_padded_scores)
from untils.boxes import FEATURE_STRIDE, resized_size
from untils.checkpoint import CheckpointError, load_file, load_model_weights, release_state_dict
from untils.photos import IMAGE_NET_MEAN, IMAGE_NET_STD
from untils.torchvision_compat import models

GAIC_SHORT_SIDE = 256
GAIC_PIXEL_DIVISOR = 256.0  # the release divides uint8 pixels by 256, not 255
# Channels of f3, f4 and f5; their sum is DimRed's input and tells the backbone of a checkpoint.
BACKBONE_CHANNELS = {"mobilenetv2": (32, 96, 320), "shufflenetv2": (116, 232, 464), "vgg16": (512, 512, 512)}


# ----------------------------------------------------------------------------------------------
# Backbones in the release's layouts
# ----------------------------------------------------------------------------------------------

def _conv_bn(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1,
             activation: Optional[type[nn.Module]] = None) -> list[nn.Module]:
    layers = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(oup)]
    return layers + ([activation(inplace=True)] if activation is not None else [])


class MobileNetV2Block(nn.Module):
    """The release's MobileNetV2 ``InvertedResidual`` (``conv`` Sequential, residual when shapes allow)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.identity = stride == 1 and inp == oup
        expand = _conv_bn(inp, hidden, 1, activation=nn.ReLU6) if expand_ratio != 1 else []
        self.conv = nn.Sequential(*expand, *_conv_bn(hidden, hidden, 3, stride, hidden, nn.ReLU6),
                                  *_conv_bn(hidden, oup, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.identity else self.conv(x)


class ReleaseMobileNetV2(nn.Module):
    """The release's ImageNet MobileNetV2 (width 1.0): ``features`` (18 stages), ``conv``, ``classifier``.

    Holds the layout of ``mobilenetv2_1.0-0c6065bc.pth`` so that file loads strictly; GAIC uses
    ``features`` only.
    """
    # expand ratio t, output channels c, repeats n, first stride s
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, 2, activation=nn.ReLU6))]
        channels = 32
        for expand, out, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(MobileNetV2Block(channels, out, stride if index == 0 else 1, expand))
                channels = out
        self.features = nn.Sequential(*layers)
        self.conv = nn.Sequential(*_conv_bn(channels, 1280, 1, activation=nn.ReLU6))
        self.classifier = nn.Linear(1280, 1000)


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    return x.view(batch, groups, channels // groups, height, width).transpose(1, 2).reshape(batch, -1, height, width)


class ShuffleNetV2Block(nn.Module):
    """The release's ShuffleNetV2 unit; ``banch1``/``banch2`` are the release's parameter names.

    Stride 1 (``benchmodel`` 1): half the channels pass through, ``banch2`` transforms the other
    half. Stride 2 (``benchmodel`` 2): both branches see the whole input. Then a channel shuffle.
    """

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        half = oup // 2
        self.downsample = stride == 2
        branch_in = inp if self.downsample else half
        if self.downsample:
            self.banch1 = nn.Sequential(*_conv_bn(inp, inp, 3, stride, inp),
                                        *_conv_bn(inp, half, 1, activation=nn.ReLU))
        self.banch2 = nn.Sequential(*_conv_bn(branch_in, half, 1, activation=nn.ReLU),
                                    *_conv_bn(half, half, 3, stride, half),
                                    *_conv_bn(half, half, 1, activation=nn.ReLU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            out = torch.cat([self.banch1(x), self.banch2(x)], dim=1)
        else:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat([kept, self.banch2(transformed)], dim=1)
        return _channel_shuffle(out, 2)


class ReleaseShuffleNetV2(nn.Module):
    """The release's ImageNet ShuffleNetV2 x1.0: ``conv1``, ``maxpool``, ``features`` (16 units),
    ``conv_last``, ``classifier``: the layout of ``shufflenetv2_x1_69.402_88.374.pth.tar``."""
    STAGES = ((4, 116), (8, 232), (4, 464))  # units per stage, output channels

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(3, 24, 3, 2, activation=nn.ReLU))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        units, channels = [], 24
        for repeats, out in self.STAGES:
            for index in range(repeats):
                units.append(ShuffleNetV2Block(channels, out, 2 if index == 0 else 1))
                channels = out
        self.features = nn.Sequential(*units)
        self.conv_last = nn.Sequential(*_conv_bn(channels, 1024, 1, activation=nn.ReLU))
        self.classifier = nn.Sequential(nn.Linear(1024, 1000))


def _load_imagenet_weights(network: nn.Module, path: str, description: str) -> None:
    """Load an ImageNet weight file into ``network`` strictly; errors name the file."""
    state = load_file(path, f"{description} ImageNet weight file", BackboneWeightsError)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(value) for value in state.values()):
        raise BackboneWeightsError(f"{description} ImageNet weight file {path!r} does not hold a state_dict")
    state = release_state_dict(dict(state))
    own = network.state_dict()
    for name, buffer in own.items():
        if name.endswith("num_batches_tracked"):
            state.setdefault(name, buffer)  # files saved before torch 0.4.1 lack this counter
    problems = [f"{kind} {len(names)} entries ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
                for kind, names in (("missing", sorted(set(own) - set(state))),
                                    ("unexpected", sorted(set(state) - set(own))),
                                    ("shape differs for", sorted(n for n in set(own) & set(state)
                                                                 if own[n].shape != state[n].shape)))
                if names]
    if problems:
        raise BackboneWeightsError(f"{path!r} is not a {description} ImageNet state_dict in the layout of GAIC's "
                                   f"release: {'; '.join(problems)}")
    network.load_state_dict(state, strict=True)


class GAICBackbone(nn.Module):
    """``feature3``/``feature4``/``feature5`` as the release's ``*_base`` classes name them.

    Stages wrap slices of the ImageNet network (``feature3.0.<index>``). The release's VGG16
    base also registers ``feature`` (conv1_1 .. conv5_3, the same modules), which its checkpoints
    therefore hold twice; it is registered here too and not used.
    """

    def __init__(self, name: str, backbone_weight_path: Optional[str] = None) -> None:
        super().__init__()
        if name not in BACKBONE_CHANNELS:
            raise ValueError(f"GAIC backbone {name!r}; expected one of {sorted(BACKBONE_CHANNELS)}")
        self.channels = BACKBONE_CHANNELS[name]
        if name == "mobilenetv2":
            net = ReleaseMobileNetV2()
            self.feature3 = nn.Sequential(net.features[:7])
            self.feature4 = nn.Sequential(net.features[7:14])
            self.feature5 = nn.Sequential(net.features[14:])
        elif name == "shufflenetv2":
            net = ReleaseShuffleNetV2()
            self.feature3 = nn.Sequential(net.conv1, net.maxpool, net.features[:4])
            self.feature4 = nn.Sequential(net.features[4:12])
            self.feature5 = nn.Sequential(net.features[12:])
        else:
            net = models.vgg16(weights=None)
            self.feature = nn.Sequential(net.features[:-1])
            self.feature3 = nn.Sequential(net.features[:23])
            self.feature4 = nn.Sequential(net.features[23:30])
            self.feature5 = nn.Sequential(net.features[30:])
        if backbone_weight_path is not None:
            _load_imagenet_weights(net, backbone_weight_path, name)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f3 = self.feature3(x)
        f4 = self.feature4(f3)
        return f3, f4, self.feature5(f4)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

def gaic_fc_layers(in_dim: int, align_size: int, dropout: bool) -> nn.Sequential:
    """The release's ``fc_layers``: conv -> 768, ReLU; 1x1 -> 128, ReLU; [dropout]; 1x1 -> 1."""
    layers = [nn.Sequential(nn.Conv2d(in_dim, 768, kernel_size=align_size), nn.ReLU(inplace=True)),
              nn.Sequential(nn.Conv2d(768, 128, kernel_size=1), nn.ReLU(inplace=True))]
    if dropout:
        layers.append(nn.Dropout(p=0.5))
    return nn.Sequential(*layers, nn.Conv2d(128, 1, kernel_size=1))


class GAICOfficialModel(nn.Module):
    """GAIC's ``crop_model_multi_scale_shared`` with the release's parameter names.

    ``forward(image, crop_box, human_box=None, crop_valid=None)``: ``image`` (B, 3, H, W) prepared
    by :func:`gaic_preprocess`, ``crop_box`` (B, N, 4) ``[x1, y1, x2, y2]`` in its pixels,
    ``crop_valid`` (B, N) bool marking the real crops of a padded batch. Returns a
    :class:`cropping_model.CropOutput` whose ``score`` is (B, N), padded crops ``-inf``. GAIC takes
    no person box: ``human_box`` is accepted, like every crop model here, and not used.

    ``backbone_weight_path`` loads ImageNet weights in the release's layout into the backbone
    (``mobilenetv2_1.0-0c6065bc.pth``, ``shufflenetv2_x1_69.402_88.374.pth.tar``, torchvision's
    ``vgg16-397923af.pth``); without it the backbone starts from random init (a checkpoint then
    supplies every weight). Heads use PyTorch's default init, as the release's training does.
    """

    def __init__(self, backbone: str = "mobilenetv2", reduced_dim: int = 8, align_size: int = 9,
                 dropout: bool = True, backbone_weight_path: Optional[str] = None) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.Feat_ext = GAICBackbone(backbone, backbone_weight_path)
        self.DimRed = nn.Conv2d(sum(self.Feat_ext.channels), reduced_dim, kernel_size=1)
        self.crop_align = CropAlignFeatures(align_size, 1.0 / FEATURE_STRIDE)
        self.FC_layers = gaic_fc_layers(2 * reduced_dim, align_size, dropout)

    def reduced_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, reduced_dim, H/16, W/16): the three scales brought to f4's size, concatenated, reduced."""
        f3, f4, f5 = self.Feat_ext(image)
        # nn.UpsamplingBilinear2d(scale_factor=...) is exactly this (align_corners=True).
        down = F.interpolate(f3, scale_factor=0.5, mode="bilinear", align_corners=True)
        up = F.interpolate(f5, scale_factor=2.0, mode="bilinear", align_corners=True)
        if not down.shape[-2:] == f4.shape[-2:] == up.shape[-2:]:
            raise ValueError(f"image of size {tuple(image.shape[-2:])} gives feature maps of sizes "
                             f"{tuple(down.shape[-2:])}, {tuple(f4.shape[-2:])} and {tuple(up.shape[-2:])}; "
                             "GAIC's models need sides that are multiples of 32 (gaic_preprocess makes them)")
        return self.DimRed(torch.cat([down, f4, 0.5 * up], dim=1))

    def forward(self, image: torch.Tensor, crop_box: torch.Tensor, human_box: Optional[torch.Tensor] = None,
                crop_valid: Optional[torch.Tensor] = None) -> CropOutput:
        batch = image.shape[0]
        if crop_box.dim() != 3 or crop_box.shape[0] != batch or crop_box.shape[-1] != 4:
            raise ValueError(f"crop_box of shape {tuple(crop_box.shape)}: expected ({batch}, N, 4)")
        rois = boxes_with_batch_index(crop_box.to(image.dtype))
        aligned = self.crop_align(self.reduced_features(image), rois)
        scores = self.FC_layers(aligned).reshape(batch, crop_box.shape[1])
        return CropOutput(mask_padded_scores(scores, crop_valid))


# ----------------------------------------------------------------------------------------------
# Loading the release's checkpoints, and its preprocessing
# ----------------------------------------------------------------------------------------------

def is_official_gaic_state_dict(state_dict: Mapping[str, object]) -> bool:
    """Whether ``state_dict`` is one of the release's (also with DataParallel's ``module.`` prefix,
    and with the last conv at ``FC_layers.2`` or ``FC_layers.3``)."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        return False
    names = set(release_state_dict(dict(state_dict)))
    return ("DimRed.weight" in names and "FC_layers.0.0.weight" in names
            and any(name.startswith("Feat_ext.") for name in names)
            and ("FC_layers.2.weight" in names) != ("FC_layers.3.weight" in names))


def official_gaic_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> GAICOfficialModel:
    """The release's model built to fit ``state_dict`` (backbone, reduced_dim, align size and
    dropout read from its keys), its weights loaded strictly; on the CPU, in eval mode.

    Raises :class:`untils.checkpoint.CheckpointError` naming what does not fit.
    """
    if not is_official_gaic_state_dict(state_dict):
        raise CheckpointError("not a state_dict of GAIC's release (expected Feat_ext.*, DimRed.* and FC_layers.* "
                              "with the last conv at FC_layers.2 or FC_layers.3)")
    state = release_state_dict(dict(state_dict))
    reduce_weight = state["DimRed.weight"]
    by_channels = {sum(channels): name for name, channels in BACKBONE_CHANNELS.items()}
    backbone = by_channels.get(reduce_weight.shape[1])
    if backbone is None:
        known = ", ".join(f"{channels} ({name})" for channels, name in sorted(by_channels.items()))
        raise CheckpointError(f"GAIC state_dict with DimRed over {reduce_weight.shape[1]} channels: its backbone is "
                              f"not supported (known: {known})")
    model = GAICOfficialModel(backbone, reduced_dim=reduce_weight.shape[0],
                              align_size=state["FC_layers.0.0.weight"].shape[-1],
                              dropout="FC_layers.3.weight" in state)
    load_model_weights(model, {"model": state})
    return model.eval()


def gaic_preprocess(rgb: np.ndarray) -> tuple[torch.Tensor, float, float]:
    """A photo as the release's test code prepares it: ``(image (1, 3, H', W'), ratio_w, ratio_h)``.

    ``rgb``: (H, W, 3) uint8 in RGB order. ``cv2.resize`` (bilinear, on the uint8 pixels) so the
    shorter side is 256 and each side a multiple of 32 (Python's ``round``, as the release),
    divided by 256.0, ImageNet mean/std. ``ratio_w = W' / W`` and ``ratio_h = H' / H`` map original
    pixels to the resized image (``untils.boxes.rescale_boxes``).
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        described = (f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray)
                     else type(rgb).__name__)
        raise ValueError(f"gaic_preprocess expects an (H, W, 3) uint8 RGB array, got {described}")
    height, width = rgb.shape[:2]
    resized_w, resized_h = resized_size(width, height, (GAIC_SHORT_SIDE, GAIC_SHORT_SIDE), True)
    pixels = (cv2.resize(rgb, (resized_w, resized_h)) / GAIC_PIXEL_DIVISOR).astype(np.float32)
    pixels = (pixels - np.array(IMAGE_NET_MEAN, dtype=np.float32)) / np.array(IMAGE_NET_STD, dtype=np.float32)
    image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).unsqueeze(0)
    return image, resized_w / width, resized_h / height
