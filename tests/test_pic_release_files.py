"""Every kind of PIC release file loads through ``load_crop_model`` and scores as the release's code.

State_dicts are built here to the parameter names and shapes of the release's class definitions
(``models/prior_model.py``, ``models/finetune_model.py``; External-Attention-pytorch's ``DAModule``
for ``danet``), weights by the fixture README's rule. The reference is a float64 re-implementation
of the release's forward pass written below: torchvision's own ResNet50 and VGG16 for those
backbones (the release's modules), the release's multi-scale recipe, RoIAlignAvg/RoDAlignAvg as
plain aligns (``tests.test_align_ops.reference_align``) followed by 2x2 average pooling, the heads
with eval-mode BatchNorm, ``DAModule``'s two attention branches, and ``FC_layers_3`` as a Linear
map or as the Conv1d(1, 1, 40, stride 39) window sums. MobileNetV2's and ShuffleNetV2's backbone
features come from the model (checked against the release's outputs in test_pic_official.py and
test_gaic_official.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import finetune_PIC
import prior_PIC
from cropping_model import load_crop_model
from pic_model import PICOfficialModel, is_official_pic_state_dict
from tests.conftest import require_shared
from tests.test_align_ops import reference_align
from tests.test_gaic_official import (
    release_weights,
    shufflenet_official_name,
    shufflenetv2_imagenet_shapes,
    vgg16_official_shapes,
)
from untils.checkpoint import read_checkpoint
from untils.torchvision_compat import models

HEAD_NAMES = ("FC_layers_1", "FC_layers_2", "FC_layers_3", "DimRed")
CHANNELS = {"mobilenetv2": 448, "shufflenetv2": 812, "vgg16": 1536, "resnet50": 3584}


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(require_shared("official_fixtures/pic_forward_fixture.pt"), weights_only=True)


def head_shapes(fixture, in_channels: int, head: str) -> dict[str, tuple[int, ...]]:
    """``DimRed`` over ``in_channels`` and the fixture's heads; ``FC_layers_3`` as ``head`` makes it."""
    shapes = {
        name: tuple(shape) for name, shape in fixture["state_dict_shapes"].items() if name.startswith(HEAD_NAMES[:2])
    }
    shapes.update({"DimRed.weight": (8, in_channels, 1, 1), "DimRed.bias": (8,)})
    if head == "linear":  # nn.Sequential(nn.Linear(945, 24))
        return {**shapes, "FC_layers_3.0.weight": (24, 945), "FC_layers_3.0.bias": (24,)}
    return {**shapes, "FC_layers_3.weight": (1, 1, 40), "FC_layers_3.bias": (1,)}  # nn.Conv1d(1, 1, 40, 39)


def attention_shapes(channels: int, height: int = 16, width: int = 16) -> dict[str, tuple[int, ...]]:
    """External-Attention-pytorch's ``DAModule(d_model=channels, kernel_size=3, H, W)`` with its
    arguments passed on: a 3x3 conv and ``ScaledDotProductAttention(d_model, d_k=d_model, d_v=d_model,
    h=1)`` for positions, a 3x3 conv and ``SimplifiedScaledDotProductAttention(H*W, h=1)`` for channels."""
    shapes: dict[str, tuple[int, ...]] = {}
    for branch in ("position_attention_module", "channel_attention_module"):
        shapes[f"danet.{branch}.cnn.weight"] = (channels, channels, 3, 3)
        shapes[f"danet.{branch}.cnn.bias"] = (channels,)
    for layer in ("fc_q", "fc_k", "fc_v", "fc_o"):
        shapes[f"danet.position_attention_module.pa.{layer}.weight"] = (channels, channels)
        shapes[f"danet.position_attention_module.pa.{layer}.bias"] = (channels,)
    shapes["danet.channel_attention_module.pa.fc_o.weight"] = (height * width, height * width)
    shapes["danet.channel_attention_module.pa.fc_o.bias"] = (height * width,)
    return shapes


def resnet50_official_names() -> dict[str, str]:
    """The release's ``resnet50_base`` name of every torchvision ResNet50 entry it holds."""
    places = {
        "conv1": "feature3.0",
        "bn1": "feature3.1",
        "layer1": "feature3.4",
        "layer2": "feature3.5",
        "layer3": "feature4.0",
        "layer4": "feature5.0",
    }
    names = {}
    for name in models.resnet50(weights=None).state_dict():
        module, rest = name.split(".", 1)
        if module in places:
            names[name] = f"Feat_ext.{places[module]}.{rest}"
    return names


def backbone_shapes(fixture, backbone: str) -> dict[str, tuple[int, ...]]:
    if backbone == "mobilenetv2":
        return {n: tuple(s) for n, s in fixture["state_dict_shapes"].items() if n.startswith("Feat_ext.")}
    if backbone == "shufflenetv2":
        return {
            shufflenet_official_name(n): s
            for n, s in shufflenetv2_imagenet_shapes().items()
            if shufflenet_official_name(n)
        }
    if backbone == "vgg16":
        return vgg16_official_shapes()
    state = models.resnet50(weights=None).state_dict()
    return {official: tuple(state[name].shape) for name, official in resnet50_official_names().items()}


def release_state(fixture, backbone: str, head: str, attention: bool, seed: int = 20240601) -> dict:
    shapes = {**backbone_shapes(fixture, backbone), **head_shapes(fixture, CHANNELS[backbone], head)}
    if attention:
        shapes.update(attention_shapes(CHANNELS[backbone]))
    state = release_weights(shapes, seed)
    if backbone == "vgg16":  # the release's `feature` and `feature3/4` are the same modules: one value each
        for name in [n for n in state if n.startswith("Feat_ext.feature.")]:
            index = int(name.split(".")[3])
            stage = "feature3" if index < 23 else "feature4"
            state[name] = state[name.replace("Feat_ext.feature.", f"Feat_ext.{stage}.")]
    return state


# ---------- the float64 reference ----------


def reference_features(model: PICOfficialModel, state: dict, backbone: str, image: torch.Tensor) -> torch.Tensor:
    """``cat(down2(f3), f4, 0.5 * up2(f5))`` of the release, float64."""
    x = image.double()
    if backbone == "resnet50":
        net = models.resnet50(weights=None)
        net.load_state_dict(
            {name: state[official] for name, official in resnet50_official_names().items()}, strict=False
        )
        net = net.double().eval()
        f3 = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))
        f4 = net.layer3(f3)
        f5 = net.layer4(f4)
    elif backbone == "vgg16":
        net = models.vgg16(weights=None)
        features = {}
        for name, value in state.items():
            if name.startswith(("Feat_ext.feature3.0.", "Feat_ext.feature4.0.")):
                features[name.split(".", 3)[3]] = value
        net.features.load_state_dict(features)
        layers = net.features.double().eval()
        f3 = layers[:23](x)
        f4 = layers[23:30](f3)
        f5 = layers[30:](f4)
    else:
        f3, f4, f5 = model.Feat_ext.double()(x)
        model.Feat_ext.float()
    down = F.interpolate(f3, scale_factor=0.5, mode="bilinear", align_corners=True)
    up = F.interpolate(f5, scale_factor=2.0, mode="bilinear", align_corners=True)
    return torch.cat([down, f4, 0.5 * up], dim=1)


def conv_bn_relu(x: torch.Tensor, state: dict, prefix: str, padding: int = 0) -> torch.Tensor:
    x = F.conv2d(x, state[f"{prefix}.0.weight"].double(), state[f"{prefix}.0.bias"].double(), padding=padding)
    mean, var = state[f"{prefix}.1.running_mean"].double(), state[f"{prefix}.1.running_var"].double()
    scale = state[f"{prefix}.1.weight"].double() / torch.sqrt(var + 1e-5)
    shift = state[f"{prefix}.1.bias"].double()
    return torch.relu((x - mean[:, None, None]) * scale[:, None, None] + shift[:, None, None])


def fc_layers(x: torch.Tensor, state: dict, name: str) -> torch.Tensor:
    """The release's ``fc_layers_1``/``fc_layers_2`` in eval mode (dropout is the identity)."""
    x = conv_bn_relu(conv_bn_relu(x, state, f"{name}.0"), state, f"{name}.1")
    return F.conv2d(x, state[f"{name}.3.weight"].double(), state[f"{name}.3.bias"].double())


def reference_attention(x: torch.Tensor, state: dict) -> torch.Tensor:
    """``DAModule.forward`` in eval mode: position branch + channel branch, no residual."""

    def weight(name):
        return state[f"danet.{name}"].double()

    batch, channels, height, width = x.shape
    out = torch.zeros_like(x)
    for b in range(batch):
        y = (
            F.conv2d(
                x[b : b + 1],
                weight("position_attention_module.cnn.weight"),
                weight("position_attention_module.cnn.bias"),
                padding=1,
            )[0]
            .reshape(channels, -1)
            .T
        )  # (HW, C)
        q, k, v = (
            y @ weight(f"position_attention_module.pa.{n}.weight").T + weight(f"position_attention_module.pa.{n}.bias")
            for n in ("fc_q", "fc_k", "fc_v")
        )
        attended = torch.softmax(q @ k.T / math.sqrt(channels), dim=-1) @ v
        position = attended @ weight("position_attention_module.pa.fc_o.weight").T + weight(
            "position_attention_module.pa.fc_o.bias"
        )  # (HW, C)
        z = F.conv2d(
            x[b : b + 1],
            weight("channel_attention_module.cnn.weight"),
            weight("channel_attention_module.cnn.bias"),
            padding=1,
        )[0].reshape(channels, -1)  # (C, HW)
        attended = torch.softmax(z @ z.T / math.sqrt(height * width), dim=-1) @ z
        channel = attended @ weight("channel_attention_module.pa.fc_o.weight").T + weight(
            "channel_attention_module.pa.fc_o.bias"
        )  # (C, HW)
        out[b] = (position.T + channel).reshape(channels, height, width)
    return out


def reference_scores(model, state, backbone, image, rois, user_image) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective scores (K,), scores with the personal offsets (K,)) of the release, float64."""

    def conv1x1(x, name):
        return F.conv2d(x, state[f"{name}.weight"].double(), state[f"{name}.bias"].double())

    reduced = conv1x1(reference_features(model, state, backbone, image), "DimRed")
    aligned = [F.avg_pool2d(reference_align(op, reduced, rois, 10, 10, 1 / 16), 2, 1) for op in ("roi", "rod")]
    objective = fc_layers(torch.cat(aligned, dim=1), state, "FC_layers_1").flatten()
    features = reference_features(model, state, backbone, user_image)
    if "danet.channel_attention_module.cnn.weight" in state:
        features = reference_attention(features, state)
    logits = fc_layers(conv1x1(features, "DimRed"), state, "FC_layers_2").mean(dim=(2, 3))[0]  # (945,)
    if "FC_layers_3.0.weight" in state:
        offsets = state["FC_layers_3.0.weight"].double() @ logits + state["FC_layers_3.0.bias"].double()
    else:
        window = state["FC_layers_3.weight"].double().flatten()
        offsets = torch.stack([window @ logits[39 * p : 39 * p + 40] for p in range(24)])
        offsets = offsets + state["FC_layers_3.bias"].double()
    return objective, objective + offsets


# ---------- the tests ----------

KINDS = [
    ("mobilenetv2", "linear", False),
    ("mobilenetv2", "conv1d", False),
    ("mobilenetv2", "linear", True),
    ("mobilenetv2", "conv1d", True),
    ("shufflenetv2", "conv1d", True),
    ("shufflenetv2", "linear", False),
    ("vgg16", "conv1d", False),
    ("resnet50", "linear", False),
    ("resnet50", "conv1d", False),
]


@pytest.mark.parametrize("backbone, head, attention", KINDS)
def test_every_release_kind_loads_and_scores_as_the_release(fixture, tmp_path, backbone, head, attention):
    state = release_state(fixture, backbone, head, attention)
    file_state = {f"module.{name}": value for name, value in state.items()} if attention else state
    assert is_official_pic_state_dict(file_state)
    torch.save(file_state, tmp_path / "release.pth")
    model = load_crop_model(tmp_path / "release.pth")
    assert isinstance(model, PICOfficialModel)
    assert (model.backbone_name, model.position_head, model.danet is not None) == (backbone, head, attention)
    assert model.cfg.channel_order == "bgr" and model.photo_spec.channel_order == "bgr"
    assert {n: tuple(v.shape) for n, v in model.state_dict().items()} == {n: tuple(v.shape) for n, v in state.items()}
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(1, 3, 64, 96, generator=generator)
    user_image = torch.randn(1, 3, 256 if attention else 160, 256 if attention else 160, generator=generator)
    rois = fixture["rois"].clone()
    rois[:, 1:] *= torch.tensor([96 / 352, 64 / 256, 96 / 352, 64 / 256])
    rois[:, 1:3], rois[:, 3:] = rois[:, 1:3].floor(), rois[:, 3:].ceil()
    with torch.no_grad():
        objective = model(image, rois[:, 1:].unsqueeze(0)).score[0]
        scores = model(image, rois[:, 1:].unsqueeze(0), user_image=user_image).score[0]
        expected_objective, expected = reference_scores(model, state, backbone, image, rois, user_image)
    for got, want in ((objective, expected_objective), (scores, expected)):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() < 1e-4


def test_conv1d_head_on_the_release_outputs(fixture):
    """The fixture's release outputs (objective scores, user logits) with a Conv1d FC_layers_3: the
    offsets are window sums of the release's own logits, computed here by hand."""
    state = {
        n: v
        for n, v in release_weights(fixture["state_dict_shapes"], fixture["weight_seed"]).items()
        if not n.startswith("FC_layers_3")
    }
    state.update({"FC_layers_3.weight": torch.linspace(-1, 1, 40).reshape(1, 1, 40), "FC_layers_3.bias": torch.ones(1)})
    model = load_crop_model(state)
    logits = fixture["expected_user_logits"][0].double().numpy()
    window = np.linspace(-1, 1, 40)
    offsets = np.array([sum(window[k] * logits[39 * p + k] for k in range(40)) + 1.0 for p in range(24)])
    expected = fixture["expected_objective_scores"].double().numpy() + offsets
    with torch.no_grad():
        scores = (
            model(fixture["gaic_image"], fixture["rois"][:, 1:].unsqueeze(0), user_image=fixture["per_image"])
            .score[0]
            .double()
            .numpy()
        )
    assert np.abs(scores - expected).max() / np.abs(expected).max() < 1e-4


def test_release_files_without_batch_counters_load(fixture):
    state = release_weights(fixture["state_dict_shapes"], fixture["weight_seed"])
    old = {f"module.{n}": v for n, v in state.items() if not n.endswith("num_batches_tracked")}
    model = load_crop_model(old)
    with torch.no_grad():
        scores = model(
            fixture["gaic_image"], fixture["rois"][:, 1:].unsqueeze(0), user_image=fixture["per_image"]
        ).score[0]
    torch.testing.assert_close(scores, fixture["expected_scores"], rtol=1e-4, atol=1e-4)


def test_channel_order_is_the_releases_unless_told(fixture):
    state = release_weights(fixture["state_dict_shapes"], fixture["weight_seed"])
    assert load_crop_model(state).photo_spec.channel_order == "bgr"
    assert load_crop_model(state, channel_order="rgb").photo_spec.channel_order == "rgb"
    with pytest.raises(ValueError, match="channel order 'grb'"):
        load_crop_model(state, channel_order="grb")


def test_scripts_take_bare_release_files(fixture, pic_release_root, tmp_path):
    """prior_PIC.py and finetune_PIC.py start from the release's own files (BGR photos, as it
    trained); fine-tuning reports wAcc_K/5 and wAcc_K/10 per K as the release prints them."""
    common = ["--data-root", str(pic_release_root), "--exp_root", str(tmp_path), "--no-progress"]
    prior_file, tuned_file = tmp_path / "prior_release.pth", tmp_path / "finetune_release.pth"
    torch.save(release_weights(fixture["state_dict_shapes"], fixture["weight_seed"]), prior_file)
    torch.save(release_state(fixture, "mobilenetv2", "conv1d", False), tuned_file)
    prior = prior_PIC.main(["--checkpoint", str(prior_file), "--official_prior_epochs", "1"] + common)
    saved = read_checkpoint(prior["checkpoint"])
    assert saved["config"]["channel_order"] == "bgr" and saved["stage"] == "prior"
    result = finetune_PIC.main(
        [
            "--checkpoint",
            str(tuned_file),
            "--finetune_images",
            "2",
            "--users",
            "centred-01",
            "--official_finetune_epochs",
            "1",
            "--no-save-users",
        ]
        + common
    )
    for row in result["rows"]:
        per_k = {n: [row[f"wacc{k}_{n}"] for k in range(1, 5)] for n in (5, 10)}
        for n, values in per_k.items():
            assert all(0 <= value <= 100 for value in values)
            assert row[f"wacc{n}"] == pytest.approx(np.mean(values), abs=0.02)
    lines = (Path(result["exp_path"]) / "results.md").read_text().splitlines()
    assert all(f"wAcc{k}/{n}" in lines[4] for k in range(1, 5) for n in (5, 10))
