"""Crop models on CUDA against the CPU in float64: HCIC with the official fixture's weights, GAIC's
official model, a few training steps, and ``torch.compile``.

Every test takes ``device``. ``cuda`` (skipped without CUDA) runs GAICD's size: a 256x352 input
with its 90 GAIC-grid crops (64 sampled views when training). ``cpu`` runs the same code on a
64x96 input (128x160 for bf16) so that CI, which has no GPU, exercises it: there the device under
test is the CPU in float32. The reference is always the CPU in float64, computed independently of
the device under test. fp32 on CUDA is compared with TF32 off (cuDNN convolutions use TF32 by
default, 10-bit mantissas); :func:`test_default_tf32_within_bf16_bound` covers PyTorch's default.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch

import cropping_model as cm
from config_GAICD import Config
from tests.conftest import require_shared
from tests.test_model import official_weights
from untils.boxes import HEAT_MAP_SIZE
from untils.candidates import gaic_grid_candidates
from untils.inference import run_model

HCIC_WEIGHT_SEED = 20221023  # official_fixtures/README.md: hcic_forward_fixture.pt's weight_seed
GAIC_WEIGHT_SEED = 20190601  # the same README: gaic_forward_fixture.pt's weight_seed
FP32_TOLERANCE = 1e-4  # max |error| / max |reference|, per output
# bf16 keeps 8 significant bits (about 2e-3 per rounding). Through vgg16's 13 convolutions and the
# heads, the CPU's bf16 autocast measured 0.3-0.9e-2 relative RMS error against float64 on the HCIC
# model at both BF16_SIZES (2026-11-28); the bound is about twice the worst. TF32 (10 bits) must
# stay inside it too.
BF16_RMS_TOLERANCE = 2e-2
# Parameter gradients in fp32: a rounding that moves a ReLU gate or a max-pool's winner re-routes a
# gradient, so eager fp32 on the CPU is 1e-4 to 1e-3 (relative RMS) from float64 on this model.
GRADIENT_RMS_TOLERANCE = 1e-2
# The loss of each training step. Adam's first steps are nearly sign steps (lr per weight), so a
# weight whose tiny gradient differs in sign moves the other way, and this random-weight model is
# very sensitive to its weights: on the CPU, fp32 against float64 differed by 5e-7, 2e-5 and 7e-4
# at steps 1, 2 and 3, about 30x more per update; the bounds allow 10x more per update.
LOSS_TOLERANCES = (FP32_TOLERANCE, 1e-3, 1e-2)
TRAINING_STEPS = len(LOSS_TOLERANCES)

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]
CUDA_ONLY = [DEVICES[1]]


@dataclass(frozen=True)
class Size:
    height: int
    width: int
    crop_stride: int  # every crop_stride-th GAIC-grid crop
    views: int  # crops per training step


SIZES = {"cpu": Size(64, 96, 8, 8), "cuda": Size(256, 352, 1, 64)}
# At 64x96 the feature map is 4x6 and a few crops make the scores' bf16 error 3-5e-2 on the CPU.
BF16_SIZES = {"cpu": Size(128, 160, 8, 8), "cuda": SIZES["cuda"]}


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls in full fp32 on CUDA (no TF32), restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64 on the CPU."""
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert actual.shape == expected.shape
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (root mean squares), in float64 on the CPU."""
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert actual.shape == expected.shape
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-12)).item()


def make_batch(size: Size, seed: int = 0) -> dict[str, torch.Tensor]:
    """One random image with its GAIC-grid crops, a person, crop scores and a target heat map."""
    generator = torch.Generator().manual_seed(seed)
    boxes = gaic_grid_candidates(size.width, size.height)[:: size.crop_stride]
    human = torch.tensor([[[0.3 * size.width, 0.2 * size.height, 0.6 * size.width, 0.9 * size.height]]])
    return {
        "image": torch.randn(1, 3, size.height, size.width, generator=generator),
        "crop_box": boxes.unsqueeze(0),
        "human_box": human,
        "crop_valid": torch.ones(1, len(boxes), dtype=torch.bool),
        "score": 1 + 4 * torch.rand(1, len(boxes), generator=generator),
        "heat_map": torch.rand(1, 1, HEAT_MAP_SIZE, HEAT_MAP_SIZE, generator=generator),
        "has_heat_map": torch.ones(1, dtype=torch.bool),
    }


def placed(batch: dict[str, torch.Tensor], device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        key: value.to(device, dtype) if value.is_floating_point() else value.to(device) for key, value in batch.items()
    }


def hcic_model() -> torch.nn.Module:
    """The paper's configuration (vgg16) with the official fixture's weights."""
    model = cm.HumanCentricCroppingModel(Config(backbone="vgg16", pretrained=False), loadweights=False)
    model.load_state_dict(official_weights(model, HCIC_WEIGHT_SEED), strict=True)
    return model.eval()


def gaic_official_model() -> torch.nn.Module:
    from tests.test_gaic_official import release_weights

    model = cm.GAICOfficialModel()
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    return cm.official_gaic_from_state_dict(release_weights(shapes, GAIC_WEIGHT_SEED))


MODELS: dict[str, Callable[[], torch.nn.Module]] = {"hcic": hcic_model, "gaic-official": gaic_official_model}


@functools.cache
def reference_model(name: str) -> torch.nn.Module:
    """The CPU float32 model ``name`` in eval mode, built once; tests use copies."""
    return MODELS[name]()


def outputs(
    model: torch.nn.Module,
    batch: dict,
    device: str,
    dtype: torch.dtype = torch.float32,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """The model's non-None outputs on ``device`` (a copy of ``model`` in ``dtype``), by name."""
    model = copy.deepcopy(model).to(device, dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        output = run_model(model, placed(batch, device, dtype), autocast_dtype, channels_last)
    return {name: value for name, value in output._asdict().items() if value is not None}


@functools.cache
def float64_outputs(name: str, size: Size) -> dict[str, torch.Tensor]:
    """The CPU float64 outputs of model ``name`` on the batch of ``size``."""
    return outputs(reference_model(name), make_batch(size), "cpu", torch.float64)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("device", DEVICES)
def test_fp32_matches_float64(device, name, channels_last, record_property):
    expected = float64_outputs(name, SIZES[device])
    with ieee_fp32():
        actual = outputs(reference_model(name), make_batch(SIZES[device]), device, channels_last=channels_last)
    assert actual.keys() == expected.keys()
    for key in expected:
        error = relative_error(actual[key], expected[key])
        record_property(f"{key}_max_relative_error", f"{error:.2e}")
        assert error < FP32_TOLERANCE, f"{key}: {error:.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_close_to_float64(device, record_property):
    """HCIC only: with the random weights of GAIC's fixture, MobileNetV2 amplifies a rounding about
    1.4x per block (bf16 against float64 on the CPU: 3e-3 after the first convolution, 0.4 at f5),
    so no bf16 bound could tell a bug from the weights there; its fp32 test holds to 1e-4."""
    expected = float64_outputs("hcic", BF16_SIZES[device])
    # channels-last: the layout that bf16 inference runs in (bench_model.py, crop.py on GPUs)
    actual = outputs(
        reference_model("hcic"),
        make_batch(BF16_SIZES[device]),
        device,
        autocast_dtype=torch.bfloat16,
        channels_last=True,
    )
    for key in expected:
        error = relative_rms(actual[key].float(), expected[key])
        record_property(f"{key}_relative_rms_error", f"{error:.2e}")
        assert error < BF16_RMS_TOLERANCE, f"{key}: {error:.2e}"


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_default_tf32_within_bf16_bound(device, record_property):
    """fp32 as PyTorch runs it by default on CUDA (TF32 convolutions)."""
    expected = float64_outputs("hcic", SIZES[device])
    actual = outputs(reference_model("hcic"), make_batch(SIZES[device]), device)
    for key in expected:
        error = relative_rms(actual[key], expected[key])
        record_property(f"{key}_relative_rms_error", f"{error:.2e}")
        assert error < BF16_RMS_TOLERANCE, f"{key}: {error:.2e}"


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_hcic_reproduces_the_official_forward_on_cuda(device):
    fixture = torch.load(require_shared("official_fixtures/hcic_forward_fixture.pt"), weights_only=True)
    model = copy.deepcopy(reference_model("hcic")).to(device)
    with ieee_fp32(), torch.no_grad():
        output = model(
            fixture["im"].to(device),
            fixture["crop_box"].to(device),
            fixture["human_box"].to(device),
            partition_mask=fixture["partition_mask"].to(device),
        )
    for name, expected in fixture["expected_with_human"].items():
        assert relative_error(getattr(output, name), expected) < FP32_TOLERANCE, name


def training_batch(device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The batch of ``device``'s size with ``views`` of its crops, as a training step samples them."""
    size = SIZES[device]
    batch = make_batch(size)
    views = torch.randperm(batch["crop_box"].shape[1], generator=torch.Generator().manual_seed(1))[: size.views]
    for key in ("crop_box", "score", "crop_valid"):
        batch[key] = batch[key][:, views]
    return placed(batch, device, dtype)


def train_steps(
    model: torch.nn.Module, parameters: list[torch.nn.Parameter], batch: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRAINING_STEPS steps of the paper's recipe (the training loss of the crops' scores and the
    heat map, Adam with its lr and weight decay) on ``model`` (eager or compiled), whose weights are
    ``parameters``. Returns each step's loss and the first step's gradient (one flat vector)."""
    cfg = reference_model("hcic").cfg
    optimizer = torch.optim.Adam(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses, first_gradient = [], None
    for _ in range(TRAINING_STEPS):
        loss, _ = cm.crop_training_loss(run_model(model, batch), batch, cfg, score_mean=3.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if first_gradient is None:
            first_gradient = torch.cat([parameter.grad.flatten() for parameter in parameters]).cpu()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses).cpu(), first_gradient


@functools.cache
def float64_training(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_steps` of the HCIC model on the CPU in float64, on the batch of ``device``'s size."""
    model = copy.deepcopy(reference_model("hcic")).double().train()
    return train_steps(model, list(model.parameters()), training_batch(device, torch.float64))


def check_training(losses: torch.Tensor, gradient: torch.Tensor, device: str, record_property) -> None:
    expected_losses, expected_gradient = float64_training(device)
    errors = ((losses.double() - expected_losses).abs() / expected_losses.abs()).tolist()
    gradient_error = relative_rms(gradient, expected_gradient)
    record_property("loss_relative_errors", " ".join(f"{error:.2e}" for error in errors))
    record_property("first_gradient_relative_rms_error", f"{gradient_error:.2e}")
    assert all(error < tolerance for error, tolerance in zip(errors, LOSS_TOLERANCES, strict=True)), errors
    assert gradient_error < GRADIENT_RMS_TOLERANCE, f"gradient: {gradient_error:.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_training_steps_match_float64(device, record_property):
    model = copy.deepcopy(reference_model("hcic")).to(device).train()
    with ieee_fp32():
        losses, gradient = train_steps(model, list(model.parameters()), training_batch(device, torch.float32))
    check_training(losses, gradient, device, record_property)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_model_matches_float64(device, record_property):
    """Inference and training steps through ``torch.compile(fullgraph=True)``: inductor on CUDA; on
    the CPU the quicker aot_eager, which traces the same graphs."""
    expected = float64_outputs("hcic", SIZES[device])
    model = copy.deepcopy(reference_model("hcic")).to(device)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="inductor" if device == "cuda" else "aot_eager", fullgraph=True)
    with ieee_fp32():
        with torch.no_grad():
            actual = run_model(compiled, placed(make_batch(SIZES[device]), device, torch.float32))
        model.train()
        losses, gradient = train_steps(compiled, list(model.parameters()), training_batch(device, torch.float32))
    for key in expected:
        error = relative_error(getattr(actual, key), expected[key])
        record_property(f"{key}_max_relative_error", f"{error:.2e}")
        assert error < FP32_TOLERANCE, f"{key}: {error:.2e}"
    check_training(losses, gradient, device, record_property)
