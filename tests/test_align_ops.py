"""RoIAlign / RoDAlign on CPU: compiled kernels and the pure-PyTorch fallback against an
independent scalar reference, the original kernels' outputs, gradcheck and pooling identities.

The reference below is written from the maths (one loop iteration per output cell, numpy
scalars in the chosen precision), not from the code under test; it is itself checked
against the official fixtures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import rod_align as rod_pkg
import roi_align as roi_pkg
from rod_align import RoDAlign, RoDAlignAvg, RoDAlignMax, rod_align
from roi_align import RoIAlign, RoIAlignAvg, RoIAlignMax, roi_align
from tests.conftest import _in_ci, require_shared

OPS = {"roi": roi_align, "rod": rod_align}
MODULES = {
    "roi": (RoIAlign, RoIAlignAvg, RoIAlignMax),
    "rod": (RoDAlign, RoDAlignAvg, RoDAlignMax),
}
BACKENDS = ("compiled", "python")


def use_backend(backend: str) -> str:
    """Skip (fail under CI, where the build is part of the install) without compiled kernels."""
    if backend == "compiled" and not (roi_pkg.KERNELS.available and rod_pkg.KERNELS.available):
        message = f"compiled kernels not built: {roi_pkg.KERNELS.load_error or rod_pkg.KERNELS.load_error}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return backend


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return use_backend(request.param)


def reference_align(
    op: str,
    features: torch.Tensor,
    rois: torch.Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    precision: type = np.float64,
) -> torch.Tensor:
    """Scalar loop over output cells; positions in ``precision`` (np.float32 reproduces the
    original kernels' float32 arithmetic step by step), interpolation in float64."""
    values = features.detach().double().numpy()
    batch_size, channels, height, width = values.shape
    boxes = rois.detach().to(torch.float64 if precision is np.float64 else torch.float32).numpy()
    out = np.zeros((len(boxes), channels, aligned_height, aligned_width))
    scale = precision(spatial_scale)
    one, zero = precision(1), precision(0)
    with np.errstate(all="ignore"):
        for k, (index, *corners) in enumerate(boxes):
            x1, y1, x2, y2 = (precision(v) * scale for v in corners)
            for ph in range(aligned_height):
                for pw in range(aligned_width):
                    if op == "roi":
                        roi_h, roi_w = y2 - y1 + one, x2 - x1 + one
                        roi_h = roi_h if roi_h > zero else zero  # NaN -> 0, like C's fmax
                        roi_w = roi_w if roi_w > zero else zero
                        h = precision(ph) * (roi_h / precision(aligned_height - 1)) + y1
                        w = precision(pw) * (roi_w / precision(aligned_width - 1)) + x1
                        if not (0 <= h < height and 0 <= w < width):
                            continue
                    else:
                        h = precision(ph) * (precision(height - 1.001) / precision(aligned_height - 1))
                        w = precision(pw) * (precision(width - 1.001) / precision(aligned_width - 1))
                        if y1 <= h <= y2 and x1 <= w <= x2:
                            continue
                    top, left = min(math.floor(h), height - 2), min(math.floor(w), width - 2)
                    dh, dw = float(h - precision(top)), float(w - precision(left))
                    patch = values[int(index), :, top : top + 2, left : left + 2]
                    out[k, :, ph, pw] = (
                        patch[:, 0, 0] * (1 - dh) * (1 - dw)
                        + patch[:, 0, 1] * (1 - dh) * dw
                        + patch[:, 1, 0] * dh * (1 - dw)
                        + patch[:, 1, 1] * dh * dw
                    )
    return torch.from_numpy(out)


def random_rois(
    generator: torch.Generator, count: int, batch_size: int, image_height: float, image_width: float
) -> torch.Tensor:
    """RoIs in image pixels cycling through: inside, partly outside, fully outside, degenerate."""
    rows = []
    for i in range(count):
        u = torch.rand(4, generator=generator).tolist()
        kind = i % 4
        if kind == 0:
            x1, y1 = u[0] * 0.6 * image_width, u[1] * 0.6 * image_height
            x2, y2 = x1 + (0.05 + u[2] * 0.35) * image_width, y1 + (0.05 + u[3] * 0.35) * image_height
        elif kind == 1:
            x1, y1 = (u[0] - 0.5) * image_width, (u[1] - 0.3) * image_height
            x2, y2 = x1 + (0.6 + u[2]) * image_width, y1 + (0.5 + u[3]) * image_height
        elif kind == 2:
            x1, y1 = (1.1 + u[0]) * image_width, (u[1] - 2.5) * image_height
            x2, y2 = x1 + u[2] * image_width, y1 + u[3] * image_height
        else:
            x2, y2 = u[0] * image_width, u[1] * image_height
            x1, y1 = x2 + 1 + u[2] * 20, y2 + 1 + u[3] * 20
        rows.append([float(i % batch_size), x1, y1, x2, y2])
    return torch.tensor(rows, dtype=torch.float64)


def random_case(
    seed: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    count: int,
    spatial_scale: float,
    dtype: torch.dtype = torch.float64,
):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, channels, height, width, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, count, batch_size, height / spatial_scale, width / spatial_scale)
    return features.to(dtype), rois.to(dtype)


CASES = [
    # seed, B, C, H, W, K, spatial_scale, aligned (h, w)
    (0, 1, 3, 6, 9, 8, 1.0, (4, 5)),
    (1, 2, 4, 9, 7, 12, 0.5, (3, 3)),
    (2, 3, 2, 16, 24, 16, 1 / 16, (9, 9)),
    (3, 2, 5, 2, 2, 8, 1 / 16, (2, 6)),
]


def test_original_import_paths():
    """The GAIC / human-centric code imports the modules from these paths."""
    from rod_align.modules.rod_align import RoDAlign as D
    from rod_align.modules.rod_align import RoDAlignAvg as E
    from rod_align.modules.rod_align import RoDAlignMax as G
    from roi_align.modules.roi_align import RoIAlign as A
    from roi_align.modules.roi_align import RoIAlignAvg as B
    from roi_align.modules.roi_align import RoIAlignMax as C

    assert (A, B, C, D, E, G) == (RoIAlign, RoIAlignAvg, RoIAlignMax, RoDAlign, RoDAlignAvg, RoDAlignMax)
    layer = RoIAlignAvg(9, 9, 1 / 16)
    assert (layer.aligned_height, layer.aligned_width, layer.spatial_scale) == (9, 9, 1 / 16)


# ---------- the original kernels' outputs ----------


def load_fixtures() -> list[dict]:
    return torch.load(require_shared("official_fixtures/align_forward_cases.pt"), weights_only=True)


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_matches_original_kernels(op, backend):
    for number, case in enumerate(load_fixtures()):
        result = OPS[op](
            case["features"],
            case["rois"],
            case["aligned_height"],
            case["aligned_width"],
            case["spatial_scale"],
            backend=backend,
        )
        expected = case[f"{op}_align"]
        assert result.dtype == torch.float32 and result.shape == expected.shape
        torch.testing.assert_close(result, expected, atol=1e-5, rtol=0, msg=f"fixture case {number}")


def test_reference_matches_original_kernels():
    """The scalar reference in float32 reproduces the original, so it can judge other cases."""
    for number, case in enumerate(load_fixtures()[::3]):
        for op in ("roi", "rod"):
            expected = reference_align(
                op,
                case["features"],
                case["rois"],
                case["aligned_height"],
                case["aligned_width"],
                case["spatial_scale"],
                np.float32,
            )
            torch.testing.assert_close(
                expected, case[f"{op}_align"].double(), atol=1e-5, rtol=0, msg=f"fixture case {3 * number}, {op}"
            )


def test_reference_hand_computed():
    """2x3 map, values 0..5: bilinear values worked out by hand."""
    features = torch.arange(6, dtype=torch.float64).view(1, 1, 2, 3)
    # RoI (0, 0)-(1, 0) at scale 1: roi_w = 2, roi_h = 1, grid 2x2 -> h in {0, 1}, w in {0, 2}.
    rois = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    expected_roi = torch.tensor([[[[0.0, 2.0], [3.0, 5.0]]]], dtype=torch.float64)
    torch.testing.assert_close(reference_align("roi", features, rois, 2, 2, 1.0), expected_roi)
    # RoD: h in {0, 0.999}, w in {0, 1.999}; the RoI covers (0, 0) only.
    # (0.999, 0): 0.001 * 0 + 0.999 * 3; (0, 1.999): 1 + 0.999 * 1; (0.999, 1.999): 2.997 + 1.999.
    expected_rod = torch.tensor([[[[0.0, 1.999], [2.997, 4.996]]]], dtype=torch.float64)
    torch.testing.assert_close(reference_align("rod", features, rois, 2, 2, 1.0), expected_rod)


def test_boundary_rules(backend):
    """Hand-computed edges: RoIAlign keeps 0 <= h < H (extrapolating in the last row), RoD
    cuts out samples on the RoI border too."""
    features = torch.arange(1, 17, dtype=torch.float64).view(1, 1, 4, 4)
    rois = torch.tensor([[0, 0, 0, 0, 3.0], [0, 0, 0, 0, 2.5], [0, 0, -1e-9, 0, 3.0]], dtype=torch.float64)
    # roi_w = 1: w in {0, 1}. Row 0: h in {0, 4}, and h = 4 = H is outside. Row 1: h in {0, 3.5},
    # extrapolated from rows 2-3 with ratio 1.5: 9 + 1.5 * 4 and 10 + 1.5 * 4. Row 2 starts above the map.
    expected = torch.tensor(
        [[[1.0, 2.0], [0.0, 0.0]], [[1.0, 2.0], [15.0, 16.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64
    ).unsqueeze(1)
    torch.testing.assert_close(roi_align(features, rois, 2, 2, 1.0, backend=backend), expected, atol=1e-12, rtol=0)
    # RoD grid: h, w in {0, 4 - 1.001}. Degenerate RoIs exactly on a grid point cut out that point.
    last = (4 - 1.001) / (2 - 1)
    rod = rod_align(
        features,
        torch.tensor([[0, 0, 0, 0, 0], [0, last, last, last, last]], dtype=torch.float64),
        2,
        2,
        1.0,
        backend=backend,
    )
    assert torch.equal(rod[:, 0] == 0, torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]]))


# ---------- forward against the reference ----------


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"seed{case[0]}")
def test_forward_float64(op, case, backend):
    seed, batch_size, channels, height, width, count, scale, (aligned_height, aligned_width) = case
    features, rois = random_case(seed, batch_size, channels, height, width, count, scale)
    result = OPS[op](features, rois, aligned_height, aligned_width, scale, backend=backend)
    expected = reference_align(op, features, rois, aligned_height, aligned_width, scale)
    assert result.dtype == torch.float64 and result.is_contiguous()
    torch.testing.assert_close(result, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"seed{case[0]}")
def test_forward_float32_positions_as_original(op, case, backend):
    seed, batch_size, channels, height, width, count, scale, (aligned_height, aligned_width) = case
    features, rois = random_case(seed, batch_size, channels, height, width, count, scale, torch.float32)
    result = OPS[op](features, rois, aligned_height, aligned_width, scale, backend=backend)
    expected = reference_align(op, features, rois, aligned_height, aligned_width, scale, np.float32)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result.double(), expected, atol=1e-5, rtol=0)


def test_random_rois_cover_every_situation():
    """The random cases do contain samples inside, partly outside, outside, degenerate RoIs."""
    features, rois = random_case(2, 3, 2, 16, 24, 16, 1 / 16)
    sampled = roi_align(features, rois, 9, 9, 1 / 16, backend="python")
    zero_cells = (sampled == 0).all(dim=1).flatten(1).float().mean(dim=1)
    assert zero_cells[0::4].max() == 0  # inside
    assert (zero_cells[1::4] > 0).all() and (zero_cells[1::4] < 1).all()  # partly outside
    assert (zero_cells[2::4] == 1).all()  # fully outside
    assert (rois[3::4, 3] < rois[3::4, 1]).all()  # degenerate
    assert set(rois[:, 0].tolist()) == {0.0, 1.0, 2.0}


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_compiled_equals_fallback(op):
    use_backend("compiled")
    for dtype in (torch.float32, torch.float64):
        features, rois = random_case(7, 2, 6, 12, 17, 20, 0.25, dtype)
        for avg_pool in (False, True):
            compiled = OPS[op](features, rois, 6, 4, 0.25, avg_pool=avg_pool, backend="compiled")
            fallback = OPS[op](features, rois, 6, 4, 0.25, avg_pool=avg_pool, backend="python")
            torch.testing.assert_close(compiled, fallback, atol=1e-6 if dtype == torch.float32 else 1e-13, rtol=0)


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_on_cpu(op, dtype, backend):
    """float16/bfloat16 sample and accumulate in float32: equal to the float32 op on the
    rounded inputs, rounded once at the end (gradient included)."""
    features, rois = random_case(11, 2, 3, 10, 13, 12, 0.5, dtype)
    weights = torch.randn(12, 3, 5, 5, generator=torch.Generator().manual_seed(3)).to(dtype)
    results = {}
    for compute in (dtype, torch.float32):
        x = features.to(compute).requires_grad_(True)
        out = OPS[op](x, rois.to(compute), 5, 5, 0.5, backend=backend)
        (grad,) = torch.autograd.grad(out, x, weights.to(compute))
        results[compute] = (out, grad)
    assert results[dtype][0].dtype == dtype and results[dtype][1].dtype == dtype
    torch.testing.assert_close(results[dtype][0], results[torch.float32][0].to(dtype), atol=0, rtol=0)
    if backend == "compiled":  # the fallback's autograd accumulates in the input dtype
        torch.testing.assert_close(results[dtype][1], results[torch.float32][1].to(dtype), atol=0, rtol=0)


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("avg_pool", [False, True])
def test_many_channels_and_images(op, avg_pool):
    """More channels than the CPU kernels' channel block (16), a partial last block, RoIs of
    three images interleaved: compiled forward and gradient equal the fallback's."""
    use_backend("compiled")
    features, rois = random_case(13, 3, 37, 9, 11, 30, 0.5)
    rois = rois[torch.randperm(30, generator=torch.Generator().manual_seed(0))]
    weights = torch.randn(30, 37, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for backend in ("compiled", "python"):
        x = features.clone().requires_grad_(True)
        out = OPS[op](x, rois, 4, 6, 0.5, avg_pool=avg_pool, backend=backend)
        results.append((out, torch.autograd.grad(out, x, weights)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_memory_layouts(op, backend):
    features, rois = random_case(5, 2, 4, 8, 11, 10, 0.5)
    expected = reference_align(op, features, rois, 4, 3, 0.5)
    channels_last = features.contiguous(memory_format=torch.channels_last)
    transposed = features.transpose(2, 3).contiguous().transpose(2, 3)
    strided = torch.randn(2, 8, 8, 22, dtype=torch.float64)[:, ::2, :, ::2]
    strided.copy_(features)
    rois_strided = torch.zeros(10, 10, dtype=torch.float64)[:, ::2]
    rois_strided.copy_(rois)
    assert not transposed.is_contiguous() and not strided.is_contiguous() and not rois_strided.is_contiguous()
    for layout, rois_layout in ((channels_last, rois), (transposed, rois), (strided, rois_strided)):
        result = OPS[op](layout, rois_layout, 4, 3, 0.5, backend=backend)
        torch.testing.assert_close(result, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_rois_dtype_independent_of_features(op, backend):
    """float64 rois with float32 features act as float32 rois (the original reads float32)."""
    features, rois = random_case(3, 1, 2, 7, 9, 8, 0.5, torch.float32)
    mixed = OPS[op](features, rois.double(), 4, 4, 0.5, backend=backend)
    torch.testing.assert_close(mixed, OPS[op](features, rois, 4, 4, 0.5, backend=backend), atol=0, rtol=0)


# ---------- empty, NaN and infinite RoIs ----------


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_no_rois(op, backend):
    features = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.zeros(0, 5, dtype=torch.float64)
    result = OPS[op](features, rois, 4, 4, 1.0, backend=backend)
    assert result.shape == (0, 3, 4, 4)
    result.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


NON_FINITE_ROIS = torch.tensor(
    [
        [0, math.nan, 1.0, 5.0, 6.0],
        [0, 1.0, 1.0, math.nan, 6.0],
        [1, math.nan, math.nan, math.nan, math.nan],
        [1, -math.inf, -math.inf, math.inf, math.inf],
        [0, 2.0, 1.0, math.inf, 4.0],
        [0, 2.0, 1.0, -math.inf, 4.0],
        [1, math.inf, 1.0, math.inf, 3.0],
        [0, -3e38, 0.0, 3e38, 5.0],
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_rois(op, dtype, backend):
    """Documented rule: non-finite sample positions count as outside the map (0); RoI extents
    that are NaN or negative count as 0; RoD comparisons with NaN are false (nothing cut out)."""
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 6, 8, generator=generator, dtype=dtype, requires_grad=True)
    rois = NON_FINITE_ROIS.to(dtype)
    result = OPS[op](features, rois, 3, 4, 1.0, backend=backend)
    precision = np.float32 if dtype == torch.float32 else np.float64
    expected = reference_align(op, features, rois, 3, 4, 1.0, precision)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result.double(), expected, atol=1e-5, rtol=0)
    result.sum().backward()
    assert torch.isfinite(features.grad).all()
    if op == "roi":
        assert (result[[0, 2, 3, 4, 6, 7]] == 0).all()  # every sample position is NaN or infinite
        assert (result[[1, 5]] != 0).any()  # NaN / negative width: the column at x1
    else:
        assert (result[3] == 0).all()  # the whole plane is inside
        outside_map = torch.tensor([[1.0, -9.0, -9.0, -8.0, -8.0]], dtype=dtype)
        torch.testing.assert_close(result[2:3], OPS[op](features, outside_map, 3, 4, 1.0, backend=backend))


# ---------- Avg / Max are the plain op + pooling ----------


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_pooled_modules_equal_plain_op_then_pooling(op, backend):
    plain_module, avg_module, max_module = MODULES[op]
    features, rois = random_case(9, 2, 3, 9, 12, 10, 0.5)
    features.requires_grad_(True)
    plain = OPS[op](features, rois, 5, 6, 0.5, backend=backend)
    for module, pool in ((avg_module, F.avg_pool2d), (max_module, F.max_pool2d)):
        result = module(4, 5, 0.5, backend=backend)(features, rois)
        expected = pool(plain, kernel_size=2, stride=1)
        torch.testing.assert_close(result, expected, atol=1e-13, rtol=0)
        weights = torch.randn_like(expected)
        (grad,) = torch.autograd.grad((result * weights).sum(), features)
        (grad_expected,) = torch.autograd.grad((expected * weights).sum(), features, retain_graph=True)
        torch.testing.assert_close(grad, grad_expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(plain_module(5, 6, 0.5, backend=backend)(features, rois), plain, atol=0, rtol=0)


def test_avg_pool_allows_size_one(backend):
    features, rois = random_case(1, 1, 2, 5, 5, 4, 1.0)
    for op in ("roi", "rod"):
        result = OPS[op](features, rois, 1, 1, 1.0, avg_pool=True, backend=backend)
        expected = OPS[op](features, rois, 2, 2, 1.0, backend="python").mean(dim=(2, 3), keepdim=True)
        torch.testing.assert_close(result, expected, atol=1e-13, rtol=0)


# ---------- gradients ----------


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("variant", [0, 1, 2], ids=["plain", "avg", "max"])
def test_gradcheck_modules(op, variant, backend):
    # Scale 1/3 and odd sizes keep samples off the integer grid, where max pooling and the
    # RoD cut-out are not differentiable.
    generator = torch.Generator().manual_seed(variant)
    features = torch.randn(2, 2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 1.1, 0.7, 11.3, 9.2], [1, -4.4, 2.3, 8.8, 20.5], [1, 5.5, 4.1, 2.2, 1.3]], dtype=torch.float64
    )
    module = MODULES[op][variant](3, 4, 1 / 3, backend=backend)
    assert torch.autograd.gradcheck(lambda x: module(x, rois), (features,))


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("avg_pool", [False, True])
def test_gradgradcheck(op, avg_pool, backend):
    features, rois = random_case(6, 2, 2, 5, 6, 4, 1 / 3)
    features.requires_grad_(True)
    assert torch.autograd.gradgradcheck(
        lambda x: OPS[op](x, rois, 3, 3, 1 / 3, avg_pool=avg_pool, backend=backend), (features,)
    )


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_backward_is_adjoint_of_reference(op, backend):
    """The gradient equals the transpose of the reference's matrix, extrapolated last
    row/column included (the original CPU backward got this wrong)."""
    features, rois = random_case(8, 2, 3, 7, 9, 12, 0.5)
    features.requires_grad_(True)
    weights = torch.randn(12, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((OPS[op](features, rois, 4, 5, 0.5, backend=backend) * weights).sum(), features)
    # The op is linear and acts on every channel alike: feeding one-hot maps as channels
    # (channel j of image b is 1 at pixel j) gives its matrix in one reference call.
    batch, channels, height, width = features.shape
    pixels = batch * height * width
    one_hot = torch.eye(pixels, dtype=torch.float64).view(pixels, batch, height, width).permute(1, 0, 2, 3)
    matrix = reference_align(op, one_hot, rois, 4, 5, 0.5)  # (K, pixels, 4, 5)
    expected = torch.einsum("kcpq,kjpq->cj", weights, matrix).view(channels, batch, height, width)
    torch.testing.assert_close(grad, expected.permute(1, 0, 2, 3), atol=1e-12, rtol=0)


def test_no_gradient_for_rois(backend):
    features, rois = random_case(2, 1, 2, 6, 6, 3, 1.0)
    features.requires_grad_(True)
    rois.requires_grad_(True)
    for op in OPS.values():
        op(features, rois, 3, 3, 1.0, backend=backend).sum().backward()
    assert rois.grad is None
    assert features.grad is not None


def test_compiled_backward_deterministic():
    """Each gradient plane accumulates its RoIs in a fixed order, whatever the threads."""
    backend = use_backend("compiled")
    features, rois = random_case(12, 2, 8, 16, 16, 64, 0.25, torch.float32)
    features.requires_grad_(True)
    weights = torch.randn(64, 8, 9, 9, generator=torch.Generator().manual_seed(0))
    grads = []
    for _ in range(2):
        out = roi_align(features, rois, 9, 9, 0.25, avg_pool=True, backend=backend)
        out = out + rod_align(features, rois, 9, 9, 0.25, avg_pool=True, backend=backend)
        grads.append(torch.autograd.grad((out * weights).sum(), features)[0])
    assert torch.equal(grads[0], grads[1])


# ---------- properties ----------

coordinate = st.floats(min_value=-80, max_value=120, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None)
@given(
    batch_size=st.integers(1, 3),
    channels=st.integers(1, 3),
    height=st.integers(2, 9),
    width=st.integers(2, 9),
    aligned=st.tuples(st.integers(2, 5), st.integers(2, 5)),
    scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 16]),
    boxes=st.lists(
        st.tuples(st.integers(0, 2), coordinate, coordinate, coordinate, coordinate), min_size=0, max_size=6
    ),
    op=st.sampled_from(["roi", "rod"]),
)
def test_property_matches_reference(batch_size, channels, height, width, aligned, scale, boxes, op):
    generator = torch.Generator().manual_seed(height * 31 + width)
    features = torch.randn(batch_size, channels, height, width, generator=generator, dtype=torch.float64)
    rois = torch.tensor([[b % batch_size, x1, y1, x2, y2] for b, x1, y1, x2, y2 in boxes], dtype=torch.float64).view(
        -1, 5
    )
    expected = reference_align(op, features, rois, *aligned, scale)
    backends = ["python"] + (["compiled"] if roi_pkg.KERNELS.available else [])
    for name in backends:
        torch.testing.assert_close(OPS[op](features, rois, *aligned, scale, backend=name), expected, atol=1e-12, rtol=0)


@settings(max_examples=20, deadline=None)
@given(
    x1=coordinate,
    y1=coordinate,
    x2=coordinate,
    y2=coordinate,
    scale=st.sampled_from([1.0, 0.5, 1 / 16]),
    aligned=st.tuples(st.integers(2, 6), st.integers(2, 6)),
)
def test_property_rod_zero_exactly_inside_roi_and_roi_zero_outside_map(x1, y1, x2, y2, scale, aligned):
    """Structural facts independent of the interpolation: with a strictly positive map, RoD is
    0 exactly at grid points inside the scaled RoI, RoIAlign 0 exactly outside the map."""
    features = torch.rand(1, 2, 7, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 1
    rois = torch.tensor([[0, x1, y1, x2, y2]], dtype=torch.float64)
    backend_name = "compiled" if roi_pkg.KERNELS.available else "python"
    rod = rod_align(features, rois, *aligned, scale, backend=backend_name)[0, 0]
    h = torch.arange(aligned[0], dtype=torch.float64) * ((7 - 1.001) / (aligned[0] - 1))
    w = torch.arange(aligned[1], dtype=torch.float64) * ((10 - 1.001) / (aligned[1] - 1))
    inside = ((h >= y1 * scale) & (h <= y2 * scale)).view(-1, 1) & ((w >= x1 * scale) & (w <= x2 * scale)).view(1, -1)
    assert torch.equal(rod == 0, inside)
    roi = roi_align(features, rois, *aligned, scale, backend=backend_name)[0, 0]
    roi_h, roi_w = max(y2 * scale - y1 * scale + 1, 0), max(x2 * scale - x1 * scale + 1, 0)
    h = y1 * scale + torch.arange(aligned[0], dtype=torch.float64) * (roi_h / (aligned[0] - 1))
    w = x1 * scale + torch.arange(aligned[1], dtype=torch.float64) * (roi_w / (aligned[1] - 1))
    outside = ~(((h >= 0) & (h < 7)).view(-1, 1) & ((w >= 0) & (w < 10)).view(1, -1))
    assert torch.equal(roi == 0, outside)
