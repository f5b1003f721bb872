"""The registered ops as PyTorch operators: opcheck (schema, fake impls, autograd
registration, AOT dispatch), torch.compile, and the fallback when the kernels are missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from rod_align import RoDAlignAvg
from roi_align import RoIAlignAvg
from tests.conftest import REPO_ROOT
from tests.test_align_ops import random_case, use_backend


def op_pair(name: str):
    namespace = getattr(torch.ops, f"{name}_align")
    return getattr(namespace, f"{name}_align").default, getattr(namespace, f"{name}_align_backward").default


@pytest.mark.parametrize("name", ["roi", "rod"])
@pytest.mark.parametrize("avg_pool", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(name, avg_pool, dtype):
    use_backend("compiled")
    forward, backward = op_pair(name)
    features, rois = random_case(3, 2, 3, 7, 9, 6, 0.5, dtype)
    features.requires_grad_(True)
    torch.library.opcheck(forward, (features, rois, 3, 4, 0.5, avg_pool))
    grad = torch.randn(6, 3, 3, 4, dtype=dtype, requires_grad=True)
    torch.library.opcheck(backward, (grad, rois, 0.5, 2, 7, 9, avg_pool))


@pytest.mark.parametrize("name", ["roi_align", "rod_align"])
def test_both_ops_register_the_documented_schemas(name):
    """One registration pattern for both ops: the same schemas, under each op's own name."""
    use_backend("compiled")
    namespace = getattr(torch.ops, name)
    assert str(getattr(namespace, name).default._schema) == (
        f"{name}::{name}(Tensor features, Tensor rois, int aligned_height, int aligned_width, "
        "float spatial_scale, bool avg_pool=False) -> Tensor"
    )
    assert str(getattr(namespace, f"{name}_backward").default._schema) == (
        f"{name}::{name}_backward(Tensor grad_output, Tensor rois, float spatial_scale, SymInt batch_size, "
        "SymInt height, SymInt width, bool avg_pool=False) -> Tensor"
    )
    for op in (name, f"{name}_backward"):
        for key in ("CPU", "Meta", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{name}::{op}", key), (op, key)


class CropFeatures(nn.Module):
    """What the cropping model does with the ops: RoI and RoD features side by side."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.roi = RoIAlignAvg(3, 3, 1 / 16, backend=backend)
        self.rod = RoDAlignAvg(3, 3, 1 / 16, backend=backend)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.roi(features, rois), self.rod(features, rois)), dim=1).relu()


@pytest.mark.parametrize("backend", ["compiled", "python"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(backend, dynamic):
    use_backend(backend)
    torch._dynamo.reset()
    model = CropFeatures(backend)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for seed, count in ((0, 10), (1, 14)):
        features, rois = random_case(seed, 2, 4, 8, 11, count, 1 / 16, torch.float32)
        features.requires_grad_(True)
        expected = model(features, rois)
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), features)
        result = compiled(features, rois)
        (grad,) = torch.autograd.grad(result.square().sum(), features)
        torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=0)


def test_fallback_when_kernels_missing():
    """Without the compiled libraries: one warning for both packages, the same results from
    the fallback, and a clear error when the kernels are demanded."""
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["roi_align._C"] = None  # makes `import roi_align._C` fail
        sys.modules["rod_align._C"] = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import roi_align, rod_align
        messages = [str(w.message) for w in caught if "compiled kernels not found" in str(w.message)]
        assert len(messages) == 1, messages
        assert "pip install --no-build-isolation -e ." in messages[0]
        assert not roi_align.KERNELS.available and not rod_align.KERNELS.available
        import torch
        features = torch.arange(24.0).view(1, 2, 3, 4)
        rois = torch.tensor([[0, 0.5, 0.5, 2.0, 1.5]])
        assert torch.equal(roi_align.RoIAlign(2, 2, 1.0)(features, rois),
                           roi_align.roi_align(features, rois, 2, 2, 1.0, backend="python"))
        for op in (roi_align.roi_align, rod_align.rod_align):
            try:
                op(features, rois, 2, 2, 1.0, backend="compiled")
            except RuntimeError as error:
                assert "compiled kernels unavailable" in str(error)
            else:
                raise AssertionError("backend='compiled' without kernels must raise")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
