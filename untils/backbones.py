"""The backbones of the crop models, cut into three scales: f3 (stride 8), f4 (16) and f5 (32).

Two families:

* torchvision's layouts (:func:`build_backbone`: vgg16, resnet50, mobilenetv2, shufflenetv2), for
  the human-centric model and our GAIC baseline; module names follow the HCIC release
  (``feature3.0.<index>``), so its checkpoints load;
* the layouts of GAIC's release (:class:`GAICBackbone`: its MobileNetV2 in the tonylins layout,
  its ShuffleNetV2 x1.0, torchvision's VGG16 and ResNet50) with the release's parameter names, so GAIC's and
  PIC's released checkpoints and ImageNet files load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from untils.checkpoint import load_file, release_state_dict
from untils.torchvision_compat import models

# torchvision constructor, ImageNet weights enum, and the channels of f3, f4, f5.
_BACKBONES = {
    "vgg16": ("vgg16", "VGG16_Weights", (512, 512, 512)),
    "resnet50": ("resnet50", "ResNet50_Weights", (512, 1024, 2048)),
    "mobilenetv2": ("mobilenet_v2", "MobileNet_V2_Weights", (32, 96, 320)),
    "shufflenetv2": ("shufflenet_v2_x1_0", "ShuffleNet_V2_X1_0_Weights", (116, 232, 464)),
}
# Channels of f3, f4 and f5 of GAIC's release layouts; their sum is DimRed's input and tells the
# backbone of a checkpoint.
BACKBONE_CHANNELS = {
    "mobilenetv2": (32, 96, 320),
    "shufflenetv2": (116, 232, 464),
    "vgg16": (512, 512, 512),
    "resnet50": (512, 1024, 2048),
}


class BackboneWeightsError(RuntimeError):
    """ImageNet weights were asked for but cannot be loaded."""


def _imagenet_model(name: str, weight_path: str | None) -> nn.Module:
    constructor_name, weights_enum_name, _ = _BACKBONES[name]
    constructor = getattr(models, constructor_name)
    if weight_path is not None:
        model = constructor(weights=None)
        _load_imagenet_weights(model, weight_path, f"torchvision {constructor_name}", "torchvision")
        return model
    weights = getattr(models, weights_enum_name).IMAGENET1K_V1
    try:
        return constructor(weights=weights)
    except Exception as error:  # offline, proxy, corrupt cache: all end the same way for the user
        raise BackboneWeightsError(
            f"could not load ImageNet weights for {name} through torchvision ({type(error).__name__}: "
            f"{error}). Download {weights.url} and pass it with --backbone_weight_path PATH, "
            f"place it in torch's hub cache ({torch.hub.get_dir()}/checkpoints), "
            f"or train from random init with --pretrained false"
        ) from error


class Backbone(nn.Module):
    """A CNN cut into three stages giving features at strides 8 (f3), 16 (f4) and 32 (f5)."""

    def __init__(self, feature3: nn.Module, feature4: nn.Module, feature5: nn.Module, channels: Sequence[int]) -> None:
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


def build_backbone(name: str, pretrained: bool = True, weight_path: str | None = None) -> Backbone:
    """Build ``name`` (vgg16, resnet50, mobilenetv2, shufflenetv2) cut into three scales.

    With ``pretrained`` the ImageNet weights come from ``weight_path`` or torchvision's weights
    API; if neither works a :class:`BackboneWeightsError` says how to fix it. Module names follow
    the official release (``feature3.0.<index>`` for vgg16), so its checkpoints load.
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(_BACKBONES)}")
    net: Any  # torchvision's networks, whose parts are reached by name
    if pretrained:
        net = _imagenet_model(name, weight_path)
    else:
        net = getattr(models, _BACKBONES[name][0])(weights=None)
    channels = _BACKBONES[name][2]
    if name == "vgg16":
        stages = (
            nn.Sequential(net.features[:23]),
            nn.Sequential(net.features[23:30]),
            nn.Sequential(net.features[30:]),
        )
    elif name == "resnet50":
        stages = (
            nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2),
            nn.Sequential(net.layer3),
            nn.Sequential(net.layer4),
        )
    elif name == "mobilenetv2":
        stages = (
            nn.Sequential(net.features[:7]),
            nn.Sequential(net.features[7:14]),
            nn.Sequential(net.features[14:-1]),
        )
    else:
        stages = (
            nn.Sequential(net.conv1, net.maxpool, net.stage2),
            nn.Sequential(net.stage3),
            nn.Sequential(net.stage4),
        )
    return Backbone(*stages, channels=channels)


# ----------------------------------------------------------------------------------------------
# GAIC's release layouts
# ----------------------------------------------------------------------------------------------


def _conv_bn(
    inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1, activation: type[nn.Module] | None = None
) -> list[nn.Module]:
    layers = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(oup)]
    return layers + ([activation(inplace=True)] if activation is not None else [])


class MobileNetV2Block(nn.Module):
    """The release's MobileNetV2 ``InvertedResidual`` (``conv`` Sequential, residual when shapes allow)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.identity = stride == 1 and inp == oup
        expand = _conv_bn(inp, hidden, 1, activation=nn.ReLU6) if expand_ratio != 1 else []
        self.conv = nn.Sequential(
            *expand, *_conv_bn(hidden, hidden, 3, stride, hidden, nn.ReLU6), *_conv_bn(hidden, oup, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.identity else self.conv(x)


class ReleaseMobileNetV2(nn.Module):
    """The release's ImageNet MobileNetV2 (width 1.0): ``features`` (18 stages), ``conv``, ``classifier``.

    Holds the layout of ``mobilenetv2_1.0-0c6065bc.pth`` so that file loads strictly; GAIC uses
    ``features`` only.
    """

    # expand ratio t, output channels c, repeats n, first stride s
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

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
            self.banch1 = nn.Sequential(
                *_conv_bn(inp, inp, 3, stride, inp), *_conv_bn(inp, half, 1, activation=nn.ReLU)
            )
        self.banch2 = nn.Sequential(
            *_conv_bn(branch_in, half, 1, activation=nn.ReLU),
            *_conv_bn(half, half, 3, stride, half),
            *_conv_bn(half, half, 1, activation=nn.ReLU),
        )

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


def _load_imagenet_weights(network: nn.Module, path: str, description: str, layout: str = "GAIC's release") -> None:
    """Load an ImageNet weight file into ``network`` (``description``, in ``layout``'s parameter names)
    strictly; errors name the file."""
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
    problems = [
        f"{kind} {len(names)} entries ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        for kind, names in (
            ("missing", sorted(set(own) - set(state))),
            ("unexpected", sorted(set(state) - set(own))),
            ("shape differs for", sorted(n for n in set(own) & set(state) if own[n].shape != state[n].shape)),
        )
        if names
    ]
    if problems:
        raise BackboneWeightsError(
            f"{path!r} is not a {description} ImageNet state_dict with the parameter names "
            f"of {layout}: {'; '.join(problems)}"
        )
    network.load_state_dict(state, strict=True)


class GAICBackbone(nn.Module):
    """``feature3``/``feature4``/``feature5`` as the release's ``*_base`` classes name them.

    Stages wrap slices of the ImageNet network (``feature3.0.<index>``). The release's VGG16
    base also registers ``feature`` (conv1_1 .. conv5_3, the same modules), which its checkpoints
    therefore hold twice; it is registered here too and not used.
    """

    def __init__(self, name: str, backbone_weight_path: str | None = None) -> None:
        super().__init__()
        if name not in BACKBONE_CHANNELS:
            raise ValueError(f"GAIC backbone {name!r}; expected one of {sorted(BACKBONE_CHANNELS)}")
        self.channels = BACKBONE_CHANNELS[name]
        net: Any  # the ImageNet network the stages are cut from
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
        elif name == "resnet50":
            net = models.resnet50(weights=None)
            self.feature3 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
            self.feature4 = nn.Sequential(net.layer3)
            self.feature5 = nn.Sequential(net.layer4)
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
