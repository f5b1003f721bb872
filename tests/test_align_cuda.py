"""CUDA kernels of RoIAlign / RoDAlign against the CPU kernels (themselves checked against
the scalar reference and the original outputs in test_align_ops.py). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from rod_align import RoDAlign, RoDAlignAvg, RoDAlignMax, rod_align
from roi_align import RoIAlign, RoIAlignAvg, RoIAlignMax, roi_align
from tests.test_align_compile import CropFeatures
from tests.test_align_ops import random_case, use_backend

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

OPS = {"roi": roi_align, "rod": rod_align}
MODULES = (RoIAlign, RoIAlignAvg, RoIAlignMax, RoDAlign, RoDAlignAvg, RoDAlignMax)
# float16/bfloat16: both devices compute in float32 in the same order and round once.
TOLERANCE = {
    torch.float64: {"atol": 1e-12, "rtol": 0},
    torch.float32: {"atol": 1e-5, "rtol": 1e-6},
    torch.float16: {"atol": 1e-3, "rtol": 1e-3},
    torch.bfloat16: {"atol": 1e-2, "rtol": 1e-2},
}
DTYPES = list(TOLERANCE)


@pytest.fixture(autouse=True)
def compiled_kernels():
    use_backend("compiled")
    for name in ("roi", "rod"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{name}_align::{name}_align", "CUDA"), (
            f"{name}_align._C was built without CUDA kernels"
        )


def cuda_case(seed: int, dtype: torch.dtype, batch_size=3, channels=5, height=13, width=17, count=40, scale=0.25):
    features, rois = random_case(seed, batch_size, channels, height, width, count, scale, dtype)
    return features, rois


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("avg_pool", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_backward_match_cpu(op, avg_pool, dtype):
    features, rois = cuda_case(1, dtype)
    weights = torch.randn(40, 5, 6, 7, generator=torch.Generator().manual_seed(2)).to(dtype)
    results = {}
    for device in ("cpu", "cuda"):
        x = features.to(device).requires_grad_(True)
        out = OPS[op](x, rois.to(device), 6, 7, 0.25, avg_pool=avg_pool, backend="compiled")
        (grad,) = torch.autograd.grad((out.float() * weights.to(device).float()).sum(), x)
        assert out.dtype == dtype and grad.dtype == dtype and out.device.type == device
        results[device] = (out.cpu(), grad.cpu())
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], **TOLERANCE[dtype])
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], **TOLERANCE[dtype])


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_float32_positions_bit_exact_with_cpu(op):
    """No fused multiply-adds (--fmad=false): float32 positions round as on CPU and in the original."""
    features, rois = cuda_case(3, torch.float32)
    cpu = OPS[op](features, rois, 9, 9, 0.25, backend="compiled")
    cuda = OPS[op](features.cuda(), rois.cuda(), 9, 9, 0.25, backend="compiled").cpu()
    assert torch.equal((cpu == 0), (cuda == 0))
    torch.testing.assert_close(cuda, cpu, atol=1e-6, rtol=0)


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_deterministic(op, dtype):
    features, rois = cuda_case(4, dtype, batch_size=4, channels=16, height=32, width=32, count=512)
    features, rois = features.cuda(), rois.cuda()
    first = OPS[op](features, rois, 9, 9, 0.25, avg_pool=True, backend="compiled")
    for _ in range(3):
        assert torch.equal(OPS[op](features, rois, 9, 9, 0.25, avg_pool=True, backend="compiled"), first)


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_fallback_on_cuda_matches_kernel(op):
    features, rois = cuda_case(5, torch.float64)
    features, rois = features.cuda(), rois.cuda()
    for avg_pool in (False, True):
        torch.testing.assert_close(
            OPS[op](features, rois, 5, 4, 0.25, avg_pool=avg_pool, backend="python"),
            OPS[op](features, rois, 5, 4, 0.25, avg_pool=avg_pool, backend="compiled"),
            atol=1e-12,
            rtol=0,
        )


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_gradcheck_on_cuda(module):
    features = torch.randn(2, 2, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    rois = torch.tensor(
        [[0, 1.1, 0.7, 11.3, 9.2], [1, -4.4, 2.3, 8.8, 20.5], [1, 5.5, 4.1, 2.2, 1.3]],
        dtype=torch.float64,
        device="cuda",
    )
    layer = module(3, 4, 1 / 3, backend="compiled")
    assert torch.autograd.gradcheck(lambda x: layer(x, rois), (features,), nondet_tol=1e-12)


@pytest.mark.parametrize("name", ["roi", "rod"])
@pytest.mark.parametrize("avg_pool", [False, True])
def test_opcheck_on_cuda(name, avg_pool):
    namespace = getattr(torch.ops, f"{name}_align")
    features, rois = cuda_case(6, torch.float32)
    features = features.cuda().requires_grad_(True)
    torch.library.opcheck(getattr(namespace, f"{name}_align").default, (features, rois.cuda(), 3, 4, 0.25, avg_pool))
    grad = torch.randn(40, 5, 3, 4, device="cuda", requires_grad=True)
    torch.library.opcheck(
        getattr(namespace, f"{name}_align_backward").default, (grad, rois.cuda(), 0.25, 3, 13, 17, avg_pool)
    )


def test_layouts_and_empty_on_cuda():
    features, rois = cuda_case(7, torch.float32)
    features, rois = features.cuda(), rois.cuda()
    for op in OPS.values():
        expected = op(features, rois, 4, 4, 0.25, backend="compiled")
        channels_last = features.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(op(channels_last, rois, 4, 4, 0.25, backend="compiled"), expected, atol=0, rtol=0)
        torch.testing.assert_close(
            op(features, rois.t().contiguous().t(), 4, 4, 0.25, backend="compiled"), expected, atol=0, rtol=0
        )
        x = features.clone().requires_grad_(True)
        empty = op(x, rois[:0], 4, 4, 0.25, backend="compiled")
        assert empty.shape == (0, 5, 4, 4) and empty.is_cuda
        empty.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


def test_errors_on_cuda():
    features, rois = cuda_case(8, torch.float32)
    for op in OPS.values():
        with pytest.raises((ValueError, RuntimeError), match="features are on cuda:0 but rois on cpu"):
            op(features.cuda(), rois, 3, 3, 0.25, backend="compiled")
        bad = rois.clone()
        bad[2, 0] = 3.0
        with pytest.raises(ValueError, match=r"rois\[2, 0\] = 3 is not a batch index"):
            op(features.cuda(), bad.cuda(), 3, 3, 0.25, backend="compiled")


@pytest.mark.parametrize("name", ["roi", "rod"])
def test_cuda_backward_skips_rows_without_a_batch_index(name):
    """The CUDA backward does not copy batch indices to the host (autograd gives it the rows the
    forward checked); a row whose index is out of range, fractional or NaN scatters nothing."""
    features, rois = cuda_case(10, torch.float32)
    grad = torch.randn(rois.shape[0], 5, 3, 3, generator=torch.Generator().manual_seed(11))
    backward = getattr(getattr(torch.ops, f"{name}_align"), f"{name}_align_backward")
    bad = rois.clone()
    bad[[1, 4, 7], 0] = torch.tensor([3.0, 0.5, float("nan")])
    keep = torch.ones(rois.shape[0], dtype=torch.bool)
    keep[[1, 4, 7]] = False
    expected = backward(grad[keep], rois[keep], 0.25, 3, 13, 17, True)
    result = backward(grad.cuda(), bad.cuda(), 0.25, 3, 13, 17, True)
    torch.testing.assert_close(result.cpu(), expected, **TOLERANCE[torch.float32])


def test_backward_flags_nondeterminism():
    features, rois = cuda_case(9, torch.float32)
    x = features.cuda().requires_grad_(True)
    out = roi_align(x, rois.cuda(), 3, 3, 0.25, backend="compiled")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="deterministic"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    features, rois = cuda_case(10, torch.float32)
    for op in OPS.values():
        expected = op(features.cuda(0), rois.cuda(0), 3, 3, 0.25, backend="compiled")
        result = op(features.cuda(1), rois.cuda(1), 3, 3, 0.25, backend="compiled")
        assert result.device == torch.device("cuda", 1)
        torch.testing.assert_close(result.cpu(), expected.cpu(), atol=0, rtol=0)


def test_torch_compile_on_cuda():
    torch._dynamo.reset()
    model = CropFeatures("compiled")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    features, rois = random_case(11, 2, 4, 8, 11, 10, 1 / 16, torch.float32)
    features, rois = features.cuda().requires_grad_(True), rois.cuda()
    expected = model(features, rois)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), features)
    result = compiled(features, rois)
    (grad,) = torch.autograd.grad(result.square().sum(), features)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)
