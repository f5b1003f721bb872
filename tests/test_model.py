"""The human-centric model against the official release's outputs, and every switch of the config."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import cropping_model as cm
from config_GAICD import Config
from tests.conftest import require_shared
from untils.boxes import crop_masks
from untils.content_preserve import GraphReasoningModule
from untils.score_losses import (
    listwise_view_ranking_loss,
    score_rank_loss,
    score_regression_loss,
    score_weighted_regression_loss,
)


def small_cfg(**overrides) -> Config:
    return Config(pretrained=False, **{"backbone": "vgg16", **overrides})


def official_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The fixture README's recipe for the official model's weights."""
    weights = {}
    for name, value in model.state_dict().items():
        generator = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
        tensor = torch.randn(value.shape, generator=generator)
        if value.dim() >= 2:
            fan = 2.0 if name.startswith("backbone.") else 1.0
            tensor = tensor * math.sqrt(fan / (value.numel() // value.shape[0]))
        else:
            tensor = tensor * 0.01
        weights[name] = tensor
    return weights


@pytest.fixture(scope="module")
def fixture():
    return torch.load(require_shared("official_fixtures/hcic_forward_fixture.pt"), weights_only=True)


@pytest.fixture(scope="module")
def official_model(fixture):
    torch.manual_seed(0)
    model = cm.HumanCentricCroppingModel(small_cfg(), loadweights=False)
    model.load_state_dict(official_weights(model, fixture["weight_seed"]), strict=True)
    return model.eval()


def test_parameter_names_and_shapes_match_the_release(fixture):
    model = cm.HumanCentricCroppingModel(small_cfg(), loadweights=False)
    ours = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    theirs = {name: tuple(shape) for name, shape in fixture["state_dict_shapes"].items()}
    assert ours == theirs


@pytest.mark.parametrize("with_human", [True, False])
def test_reproduces_the_official_forward(fixture, official_model, with_human):
    human_box = fixture["human_box"] if with_human else torch.full_like(fixture["human_box"], -1)
    partition = fixture["partition_mask"] if with_human else fixture["partition_mask_no_human"]
    expected = fixture["expected_with_human" if with_human else "expected_no_human"]
    height, width = fixture["im"].shape[-2:]
    # the model draws no crop masks: it uses the boxes' own, which are the release's masks
    assert torch.equal(crop_masks(fixture["crop_box"], width, height), fixture["crop_mask"])
    with torch.no_grad():
        score, heat, part = official_model(fixture["im"], fixture["crop_box"], human_box, partition_mask=partition)
    for name, ours in (("partition_feat", part), ("heat_map", heat), ("score", score)):
        reference = expected[name]
        assert ours.shape == reference.shape, name
        scale = reference.abs().max().clamp_min(1e-6)
        assert ((ours - reference).abs().max() / scale).item() < 1e-4, name


def test_person_is_decided_per_image(fixture, official_model):
    """A batch mixing an image with and without a person scores each as it would alone."""
    im = torch.cat([fixture["im"], fixture["im"]])
    crop_box = fixture["crop_box"][:, :20].repeat(2, 1, 1)
    human_box = torch.cat([torch.full_like(fixture["human_box"], -1), fixture["human_box"]])
    partition = torch.cat([fixture["partition_mask_no_human"], fixture["partition_mask"]])
    with torch.no_grad():
        score, heat, part = official_model(im, crop_box, human_box, partition_mask=partition)
    for image, key in ((0, "expected_no_human"), (1, "expected_with_human")):
        expected = fixture[key]
        torch.testing.assert_close(score[image], expected["score"][0, :20], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(heat[image], expected["heat_map"][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(part[image], expected["partition_feat"][0], rtol=1e-4, atol=1e-5)


def test_padded_crops_are_never_scored(fixture, official_model):
    crop_box = fixture["crop_box"][:, :12].clone()
    valid = torch.ones(1, 12, dtype=torch.bool)
    valid[0, 8:] = False
    crop_box[0, 8:] = -1
    with torch.no_grad():
        score = official_model(
            fixture["im"], crop_box, fixture["human_box"], crop_valid=valid, partition_mask=fixture["partition_mask"]
        ).score
    assert torch.isneginf(score[0, 8:]).all()
    torch.testing.assert_close(score[0, :8], fixture["expected_with_human"]["score"][0, :8], rtol=1e-4, atol=1e-5)


# ----- every switch changes the model as its name says ---------------------------------------


def _inputs(batch=2, height=64, width=96, crops=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    im = torch.randn(batch, 3, height, width, generator=generator)
    x1 = torch.randint(0, width // 3, (batch, crops, 1), generator=generator).float()
    y1 = torch.randint(0, height // 3, (batch, crops, 1), generator=generator).float()
    crop_box = torch.cat([x1, y1, x1 + width // 2, y1 + height // 2], dim=-1)
    human_box = torch.tensor([[[20.0, 10.0, 50.0, 60.0]]]).repeat(batch, 1, 1)
    partition = torch.zeros(batch, 9, height // 16, width // 16)
    partition[:, 4, 1:3, 1:3] = 1
    partition[:, 0, 0, :] = 1
    return im, crop_box, human_box, partition


def _forward(model, inputs):
    """``(partition_feat, heat_map, score)`` of a model on :func:`_inputs`."""
    im, crop_box, human_box, partition = inputs
    output = model(im, crop_box, human_box, partition_mask=partition)
    return output.partition_feat, output.heat_map, output.score


def _build(**overrides):
    torch.manual_seed(0)
    return cm.HumanCentricCroppingModel(small_cfg(backbone="mobilenetv2", **overrides), loadweights=False).eval()


def _state_names(model):
    return set(model.state_dict())


def test_use_rod_feature_removes_the_rod_branch():
    with_rod, without = _build(), _build(use_rod_feature=False)
    assert with_rod.crop_align.RoDAlign is not None and without.crop_align.RoDAlign is None
    assert with_rod.roi_feat_layer[0].in_channels == 64 and without.roi_feat_layer[0].in_channels == 32
    _, _, score = _forward(without, _inputs())
    assert score.shape == (2, 5) and torch.isfinite(score).all()


def test_partition_aware_switches():
    names = _state_names(_build(use_partition_aware=False))
    assert not any(name.startswith("partition_aware.") for name in names)
    no_concat = _build(concat_with_human=False)
    assert not hasattr(no_concat.partition_aware, "RoIConv")
    assert no_concat.partition_aware.group_conv.in_channels == 32
    assert _build().partition_aware.group_conv.in_channels == 48
    for part_type, groups, channels in ((0, 9, 9), (1, 1, 1), (2, 2, 2), (9, 9, 9)):
        model = _build(partition_aware_type=part_type)
        assert model.partition_aware.group_conv.out_channels == 32 * groups
        part, _, score = _forward(model, _inputs())
        assert part.shape == (2, channels, 4, 6) and torch.isfinite(score).all()


def test_partition_types_fuse_as_documented():
    """Check each partition type's fusion against a direct computation from the group conv."""
    im, crop_box, human_box, partition = _inputs(batch=1)
    for part_type in (0, 1, 2, 9):
        module = _build(partition_aware_type=part_type, concat_with_human=False).partition_aware
        x = torch.randn(1, 32, 4, 6)
        out, _ = module(x, torch.zeros(1, 5), partition)
        conv = torch.relu(module.group_conv(x))
        if part_type == 9:
            expected = sum(conv[:, 32 * k : 32 * (k + 1)] * partition[:, k : k + 1] for k in range(9))
        elif part_type == 0:
            expected = sum(conv[:, 32 * k : 32 * (k + 1)] for k in range(9)) / 9
        elif part_type == 1:
            expected = conv * partition[:, 4:5]
        else:
            expected = conv[:, :32] * partition[:, 4:5] + conv[:, 32:] * (1 - partition[:, 4:5])
        torch.testing.assert_close(out, x + expected, rtol=1e-5, atol=1e-5)


def test_content_preserve_switches():
    assert not any(n.startswith("content_preserve.") for n in _state_names(_build(use_content_preserve=False)))
    assert _build(use_content_preserve=False).fc_layer.in_features == 256
    assert _build().fc_layer.in_features == 512
    conv = _build(content_preserve_type="conv")
    assert isinstance(conv.content_preserve.relation_encoder, torch.nn.Sequential)
    assert isinstance(_build().content_preserve.relation_encoder, GraphReasoningModule)
    only = _build(only_content_preserve=True)
    assert only.roi_feat_layer is None and only.fc_layer.in_features == 256
    for model in (conv, only, _build(use_content_preserve=False)):
        _, heat, score = _forward(model, _inputs())
        assert score.shape == (2, 5) and torch.isfinite(score).all()
        if model.content_preserve is None:
            assert heat is None
        else:
            assert heat.shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="only_content_preserve"):
        small_cfg(use_content_preserve=False, only_content_preserve=True)


def test_reduced_dim_changes_widths():
    model = _build(reduced_dim=16)
    assert model.feat_ext.out_channels == 16 and model.roi_feat_layer[0].in_channels == 32


def test_graph_reasoning_matches_a_loop():
    torch.manual_seed(1)
    module = GraphReasoningModule(4, 4, 3).double()
    feat = torch.randn(1, 4, 2, 3, dtype=torch.float64)
    nodes = [feat[0, :, i, j] for i in range(2) for j in range(3)]
    out = torch.zeros(3, 2, 3, dtype=torch.float64)
    phi = [module.phi.weight @ n for n in nodes]
    theta = [module.theta.weight @ n for n in nodes]
    for a in range(6):
        sims = torch.stack([phi[a] @ theta[b] / (phi[a].norm() * theta[b].norm()) for b in range(6)])
        weights = torch.exp(sims) / torch.exp(sims).sum()
        mixed = sum(weights[b] * nodes[b] for b in range(6))
        out[:, a // 3, a % 3] = torch.relu(mixed @ module.weight)
    torch.testing.assert_close(module(feat)[0], out)


@pytest.mark.parametrize(
    "backbone,channels",
    [
        ("vgg16", (512, 512, 512)),
        ("resnet50", (512, 1024, 2048)),
        ("mobilenetv2", (32, 96, 320)),
        ("shufflenetv2", (116, 232, 464)),
    ],
)
def test_backbones_give_three_scales(backbone, channels):
    net = cm.build_backbone(backbone, pretrained=False).eval()
    with torch.no_grad():
        f3, f4, f5 = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in (f3, f4, f5)] == list(channels)
    assert [f.shape[-2:] for f in (f3, f4, f5)] == [(8, 12), (4, 6), (2, 3)]


def test_gaic_baseline_scores_and_padding():
    torch.manual_seed(0)
    model = cm.GAICModel(small_cfg(backbone="mobilenetv2"), loadweights=False).eval()
    assert model.DimRed.in_channels == 448
    im, crop_box, *_ = _inputs()
    with torch.no_grad():
        score = model(im, crop_box).score
        valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
        padded = model(im, crop_box, crop_valid=valid).score
    assert score.shape == (2, 5)
    torch.testing.assert_close(padded[valid], score[valid])
    assert torch.isneginf(padded[~valid]).all()


def test_local_backbone_weights_load(tmp_path):
    from untils.torchvision_compat import models

    torch.manual_seed(3)
    reference = models.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet.pth"
    torch.save(reference.state_dict(), path)
    net = cm.build_backbone("mobilenetv2", pretrained=True, weight_path=str(path))
    torch.testing.assert_close(net.feature3[0][0][0].weight, reference.features[0][0].weight)
    with pytest.raises(cm.BackboneWeightsError, match="does not exist"):
        cm.build_backbone("mobilenetv2", pretrained=True, weight_path=str(tmp_path / "missing.pth"))
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(cm.BackboneWeightsError, match="not a torchvision"):
        cm.build_backbone("mobilenetv2", pretrained=True, weight_path=str(tmp_path / "bad.pth"))


def test_missing_imagenet_weights_explain_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(cm.BackboneWeightsError, match="--backbone_weight_path"):
        cm.build_backbone("mobilenetv2", pretrained=True)


# ----- losses, against hand-computed cases ---------------------------------------------------


def test_smooth_l1_and_weighted_regression():
    pred, gt = torch.tensor([1.0, 2.0]), torch.tensor([1.5, 4.0])
    # |d| = 0.5 -> 0.5 * 0.5^2 = 0.125;  |d| = 2 -> 2 - 0.5 = 1.5
    assert score_regression_loss(pred, gt).item() == pytest.approx((0.125 + 1.5) / 2)
    weighted = score_weighted_regression_loss(pred, gt, 2.95).item()
    assert weighted == pytest.approx((0.125 * 1.0 + 1.5 * math.exp(4.0 - 2.95)) / 2, rel=1e-6)


def test_rank_loss_hand_case():
    pred, gt = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])
    # every ordered pair violates: (0,1),(1,2) contribute 2 each way, (0,2) 4 each way -> 16 / 3 pairs
    assert score_rank_loss(pred, gt).item() == pytest.approx(16 / 3)
    assert score_rank_loss(gt, gt).item() == 0
    sin_case = score_rank_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), "sin").item()
    assert sin_case == pytest.approx(2 * math.sin(1.0) * 1.0 / 1)


def test_listwise_view_ranking_hand_case():
    pred, gt = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([3.0, 1.0, 3.0])
    target = [math.exp(2), math.exp(1), math.exp(2)]
    target = [t / sum(target) for t in target]
    log_z = math.log(sum(math.exp(p) for p in (0.5, -1.0, 2.0)))
    expected = -sum(t * (p - log_z) for t, p in zip(target, (0.5, -1.0, 2.0), strict=True))
    assert listwise_view_ranking_loss(pred, gt).item() == pytest.approx(expected, rel=1e-6)


def test_crop_score_loss_ignores_padding_and_separates_images():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 99.0]])
    gt = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, float("nan")]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    loss = cm.crop_score_loss(pred, gt, ["RankLoss"], valid).item()
    second = score_rank_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])).item()
    assert loss == pytest.approx((16 / 3 + second) / 2)
