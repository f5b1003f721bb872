"""Bad input to RoIAlign / RoDAlign: a clear error naming the argument, on both backends,
for the modules and for the registered ops called directly."""

from __future__ import annotations

import math

import pytest
import torch

from rod_align import RoDAlign, RoDAlignAvg, RoDAlignMax, rod_align
from roi_align import RoIAlign, RoIAlignAvg, RoIAlignMax, roi_align
from tests.test_align_ops import use_backend

OPS = {"roi": roi_align, "rod": rod_align}
ALL_MODULES = (RoIAlign, RoIAlignAvg, RoIAlignMax, RoDAlign, RoDAlignAvg, RoDAlignMax)


@pytest.fixture(params=["compiled", "python"])
def backend(request) -> str:
    return use_backend(request.param)


def good_inputs():
    features = torch.randn(2, 3, 6, 7)
    rois = torch.tensor([[0, 1.0, 1.0, 4.0, 5.0], [1, 0.0, 2.0, 6.0, 3.0]])
    return features, rois


def bad_calls():
    """(id, features, rois, aligned_height, aligned_width, spatial_scale, avg_pool, expected message)."""
    features, rois = good_inputs()
    yield "rois (K,4)", features, rois[:, :4], 3, 3, 1.0, False, r"rois must have shape \(K, 5\)"
    yield "rois 1-D", features, rois[0], 3, 3, 1.0, False, r"rois must have shape \(K, 5\)"
    yield "rois 3-D", features, rois[None], 3, 3, 1.0, False, r"rois must have shape \(K, 5\)"
    yield "features 3-D", features[0], rois, 3, 3, 1.0, False, r"features must have shape \(B, C, H, W\)"
    yield "features int", features.long(), rois, 3, 3, 1.0, False, "features must be float16, bfloat16"
    yield "rois int", features, rois.int(), 3, 3, 1.0, False, "rois must be float16, bfloat16"
    yield "features bool", features > 0, rois, 3, 3, 1.0, False, "features must be float16, bfloat16"
    yield "H=1", features[:, :, :1], rois, 3, 3, 1.0, False, "H >= 2 and W >= 2.*H=1"
    yield "W=1", features[..., :1], rois, 3, 3, 1.0, False, "H >= 2 and W >= 2.*W=1"
    yield "aligned_height=1", features, rois, 1, 3, 1.0, False, "aligned_height must be an integer >= 2"
    yield "aligned_width=0", features, rois, 3, 0, 1.0, False, "aligned_width must be an integer >= 2"
    yield "avg aligned_height=0", features, rois, 0, 3, 1.0, True, "aligned_height must be an integer >= 1"
    yield "scale 0", features, rois, 3, 3, 0.0, False, "spatial_scale must be finite and > 0"
    yield "scale -1", features, rois, 3, 3, -1.0, False, "spatial_scale must be finite and > 0"
    yield "scale nan", features, rois, 3, 3, math.nan, False, "spatial_scale must be finite and > 0"
    yield "scale inf", features, rois, 3, 3, math.inf, False, "spatial_scale must be finite and > 0"
    for value in (-1.0, 2.0, 0.5, math.nan, math.inf):
        bad = rois.clone()
        bad[1, 0] = value
        yield f"batch index {value}", features, bad, 3, 3, 1.0, False, r"rois\[1, 0\] = .* is not a batch index"


BAD_CALLS = list(bad_calls())


@pytest.mark.parametrize("op", ["roi", "rod"])
@pytest.mark.parametrize("call", BAD_CALLS, ids=[call[0] for call in BAD_CALLS])
def test_bad_input_raises(op, call, backend):
    _, features, rois, aligned_height, aligned_width, scale, avg_pool, message = call
    with pytest.raises((ValueError, RuntimeError), match=message):
        OPS[op](features, rois, aligned_height, aligned_width, scale, avg_pool=avg_pool, backend=backend)


@pytest.mark.parametrize("op", ["roi", "rod"])
def test_devices_differ(op, backend):
    features, rois = good_inputs()
    with pytest.raises((ValueError, RuntimeError), match="features are on cpu but rois on meta"):
        OPS[op](features, rois.to("meta"), 3, 3, 1.0, backend=backend)


def test_bad_backend():
    features, rois = good_inputs()
    for op in OPS.values():
        with pytest.raises(ValueError, match="backend must be one of"):
            op(features, rois, 3, 3, 1.0, backend="cuda")


@pytest.mark.parametrize("module", ALL_MODULES, ids=lambda m: m.__name__)
def test_module_constructor_checks(module):
    pooled = module.__name__.endswith(("Avg", "Max"))
    minimum = 1 if pooled else 2
    with pytest.raises(ValueError, match=f"{module.__name__}: aligned_height must be an integer >= {minimum}"):
        module(0 if pooled else 1, 3, 1.0)
    with pytest.raises(ValueError, match="aligned_width must be an integer"):
        module(3, 2.5, 1.0)
    with pytest.raises(ValueError, match="spatial_scale must be finite and > 0"):
        module(3, 3, -0.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        module(3, 3, 1.0, backend="fast")
    assert module(1 if pooled else 2, 2, 1 / 16).spatial_scale == 1 / 16


@pytest.mark.parametrize("name", ["roi", "rod"])
def test_backward_op_checks(name):
    use_backend("compiled")
    backward = getattr(getattr(torch.ops, f"{name}_align"), f"{name}_align_backward")
    _, rois = good_inputs()
    grad = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="grad_output has 3 rows but rois has 2"):
        backward(torch.randn(3, 3, 4, 4), rois, 1.0, 2, 6, 7)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(K, C, aligned_height, aligned_width\)"):
        backward(grad[0], rois, 1.0, 2, 6, 7)
    with pytest.raises(ValueError, match="H >= 2 and W >= 2"):
        backward(grad, rois, 1.0, 2, 1, 7)
    with pytest.raises(ValueError, match=r"rois\[1, 0\] = 1 is not a batch index: expected an integer in \[0, 1\)"):
        backward(grad, rois, 1.0, 1, 6, 7)
    with pytest.raises(ValueError, match="grad_output must be float16"):
        backward(grad.int(), rois, 1.0, 2, 6, 7)
    assert backward(grad, rois, 1.0, 2, 6, 7).shape == (2, 3, 6, 7)


@pytest.mark.parametrize("op", [roi_align, rod_align])
@pytest.mark.parametrize("avg_pool", [False, True])
def test_features_without_channels_give_an_empty_result_on_both_backends(op, avg_pool):
    """The kernels return (K, 0, h, w) for C = 0; the fallback must too (it failed to reshape)."""
    features = torch.zeros(2, 0, 8, 8, requires_grad=True)
    rois = torch.tensor([[0.0, 1, 1, 6, 6], [1.0, 0, 2, 7, 5], [0.0, 3, 3, 2, 2]])
    results = [op(features, rois, 3, 4, 1.0, avg_pool=avg_pool, backend=backend) for backend in ("compiled", "python")]
    for result in results:
        assert result.shape == (3, 0, 3, 4)
        result.sum().backward()
        assert features.grad.shape == features.shape
