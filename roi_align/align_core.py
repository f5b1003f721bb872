"""The machinery both align ops share: the one place it lives (``rod_align`` imports it from here).

An op is an ``AlignOp`` built from where it samples (its ``positions``); this module does the
rest: input checks, the compiled kernels with their fake and autograd registrations, the
pure-PyTorch fallback, and the module base class.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Backend = Literal["auto", "compiled", "python"]
BACKENDS: tuple[str, ...] = ("auto", "compiled", "python")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BUILD_HINT = "build them with `pip install --no-build-isolation -e .` or `python setup.py build_ext --inplace`"

_fallback_warned = False


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of positions and accumulation: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_align_params(
    op_name: str, aligned_height: int, aligned_width: int, spatial_scale: float, pooled: bool = False
) -> None:
    # The sampling grid needs two rows and columns; 2x2 pooling samples one more each way.
    min_size, condition = (1, " with 2x2 pooling") if pooled else (2, "")
    for name, value in (("aligned_height", aligned_height), ("aligned_width", aligned_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < min_size:
            raise ValueError(f"{op_name}: {name} must be an integer >= {min_size}{condition}, got {value!r}")
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float, torch.SymFloat)):
        raise ValueError(f"{op_name}: spatial_scale must be a float, got {spatial_scale!r}")
    # Plain comparisons rather than math.isfinite: NaN fails them too, and torch.compile traces them.
    if not 0 < spatial_scale < math.inf:
        raise ValueError(f"{op_name}: spatial_scale must be finite and > 0, got {spatial_scale!r}")


def check_align_inputs(
    op_name: str,
    features: Tensor,
    rois: Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    avg_pool: bool = False,
) -> None:
    """The checks that need no tensor values (so they also run on fake tensors)."""
    check_align_params(op_name, aligned_height, aligned_width, spatial_scale, avg_pool)
    for name, tensor in (("features", features), ("rois", rois)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{op_name}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{op_name}: {name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")
    if features.dim() != 4:
        raise ValueError(f"{op_name}: features must have shape (B, C, H, W), got {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"{op_name}: rois must have shape (K, 5) with rows (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}"
        )
    if features.device != rois.device:
        raise ValueError(f"{op_name}: features are on {features.device} but rois on {rois.device}")
    height, width = features.shape[2], features.shape[3]
    if height < 2 or width < 2:
        raise ValueError(f"{op_name}: features need H >= 2 and W >= 2 for bilinear sampling, got H={height}, W={width}")


def check_batch_indices(op_name: str, rois: Tensor, batch_size: int) -> None:
    """Every ``rois[:, 0]`` must be an integer in ``[0, batch_size)`` (NaN is not)."""
    index = rois[:, 0]
    bad = ~((index >= 0) & (index < batch_size) & (index == torch.floor(index)))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{op_name}: rois[{row}, 0] = {index[row].item()} is not a batch index: "
            f"expected an integer in [0, {batch_size})"
        )


@dataclass(frozen=True)
class KernelLibrary:
    """Whether ``<package>._C`` (the compiled CPU/CUDA kernels) could be imported."""

    package: str
    load_error: str | None

    @property
    def available(self) -> bool:
        return self.load_error is None

    def use_compiled(self, backend: str) -> bool:
        if backend not in BACKENDS:
            raise ValueError(f"{self.package}: backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "python":
            return False
        if backend == "compiled" and not self.available:
            raise RuntimeError(f"{self.package}: compiled kernels unavailable ({self.load_error}); {BUILD_HINT}")
        return self.available


def load_kernel_library(package: str) -> KernelLibrary:
    """Import ``<package>._C``, which registers the ops in ``torch.ops.<package>``.

    Without it the package still works on the pure-PyTorch fallback; the first package
    of the process to find its kernels missing says so, once.
    """
    global _fallback_warned
    try:
        importlib.import_module(f"{package}._C")
    except (ImportError, OSError) as exc:
        if not _fallback_warned:
            _fallback_warned = True
            warnings.warn(
                f"{package}: compiled kernels not found ({exc}); using the slower pure-PyTorch "
                f"implementation of the same ops. To get the kernels, {BUILD_HINT}.",
                RuntimeWarning,
                stacklevel=4,  # the import of the package (through its ops.py and AlignOp)
            )
        return KernelLibrary(package, str(exc))
    return KernelLibrary(package, None)


def register_fake_and_autograd(name: str) -> None:
    """Fake (meta) impls and autograd formulas for ``torch.ops.<name>.<name>`` and its backward op.

    The backward op is linear in ``grad_output`` with the forward as its adjoint, so its
    own derivative is the forward op: double backward works too.
    """
    ops = getattr(torch.ops, name)
    forward_name, backward_name = name, f"{name}_backward"
    forward_op = getattr(ops, forward_name).default
    backward_op = getattr(ops, backward_name).default
    forward_qualname = f"{name}::{forward_name}"
    backward_qualname = f"{name}::{backward_name}"

    def forward_fake(
        features: Tensor,
        rois: Tensor,
        aligned_height: int,
        aligned_width: int,
        spatial_scale: float,
        avg_pool: bool = False,
    ) -> Tensor:
        check_align_inputs(forward_name, features, rois, aligned_height, aligned_width, spatial_scale, avg_pool)
        return features.new_empty((rois.shape[0], features.shape[1], aligned_height, aligned_width))

    def backward_fake(
        grad_output: Tensor, rois: Tensor, spatial_scale: float, batch_size, height, width, avg_pool: bool = False
    ) -> Tensor:
        return grad_output.new_empty((batch_size, grad_output.shape[1], height, width))

    def forward_setup_context(ctx, inputs, output) -> None:
        features, rois, _, _, spatial_scale, *avg_pool = inputs
        ctx.save_for_backward(rois)
        ctx.spatial_scale = spatial_scale
        ctx.avg_pool = bool(avg_pool and avg_pool[0])
        ctx.feature_size = (features.shape[0], features.shape[2], features.shape[3])

    def forward_backward(ctx, grad_output: Tensor):
        (rois,) = ctx.saved_tensors
        grad_features = None
        if ctx.needs_input_grad[0]:
            grad_features = backward_op(grad_output, rois, ctx.spatial_scale, *ctx.feature_size, ctx.avg_pool)
        return grad_features, None, None, None, None, None

    def backward_setup_context(ctx, inputs, output) -> None:
        grad_output, rois, spatial_scale, _, _, _, *avg_pool = inputs
        ctx.save_for_backward(rois)
        ctx.spatial_scale = spatial_scale
        ctx.avg_pool = bool(avg_pool and avg_pool[0])
        ctx.aligned_size = (grad_output.shape[2], grad_output.shape[3])

    def backward_backward(ctx, grad_grad_features: Tensor):
        (rois,) = ctx.saved_tensors
        grad_grad_output = None
        if ctx.needs_input_grad[0]:
            grad_grad_output = forward_op(grad_grad_features, rois, *ctx.aligned_size, ctx.spatial_scale, ctx.avg_pool)
        return grad_grad_output, None, None, None, None, None, None

    torch.library.register_fake(forward_qualname, forward_fake)
    torch.library.register_fake(backward_qualname, backward_fake)
    torch.library.register_autograd(forward_qualname, forward_backward, setup_context=forward_setup_context)
    torch.library.register_autograd(backward_qualname, backward_backward, setup_context=backward_setup_context)


def bilinear_sample(features: Tensor, batch_index: Tensor, h: Tensor, w: Tensor, keep: Tensor) -> Tensor:
    """Pure-PyTorch core of both ops: the fallback and the float64 reference.

    ``h``/``w`` are sample positions in feature pixels, ``keep`` says which samples the op
    wants; all three broadcast to ``(K, aligned_height, aligned_width)``. A sample outside
    ``[0, H) x [0, W)`` (NaN and inf included) or not kept is 0. Otherwise it interpolates
    from the top-left neighbour ``(min(floor(h), H-2), min(floor(w), W-2))``, so samples in
    the last row/column extrapolate linearly, as the original kernels do.
    Differentiable w.r.t. ``features`` through indexing.
    """
    batch_size, channels, height, width = features.shape
    h, w, keep = torch.broadcast_tensors(h, w, keep)
    inside = keep & (h >= 0) & (h < height) & (w >= 0) & (w < width)
    h = torch.where(inside, h, 0)
    w = torch.where(inside, w, 0)
    # h, w >= 0 here, so truncation is floor.
    h_start = h.to(torch.int64).clamp(max=height - 2)
    w_start = w.to(torch.int64).clamp(max=width - 2)
    h_ratio = h - h_start.to(h.dtype)
    w_ratio = w - w_start.to(w.dtype)
    top_left = (batch_index.view(-1, 1, 1) * height + h_start) * width + w_start
    corners = torch.stack((top_left, top_left + 1, top_left + width, top_left + width + 1), dim=-1)
    weights = torch.stack(
        ((1 - h_ratio) * (1 - w_ratio), (1 - h_ratio) * w_ratio, h_ratio * (1 - w_ratio), h_ratio * w_ratio), dim=-1
    )
    # explicit sizes: with no channels a -1 could not be inferred (the kernels return an empty result)
    pixels = features.to(h.dtype).permute(0, 2, 3, 1).reshape(batch_size * height * width, channels)
    values = (pixels[corners] * weights.unsqueeze(-1)).sum(dim=-2)
    values = torch.where(inside.unsqueeze(-1), values, 0)
    return values.permute(0, 3, 1, 2).to(features.dtype).contiguous()


Positions = Callable[[Tensor, tuple[int, int], int, int, float, torch.dtype], tuple[Tensor, Tensor, Tensor]]


class AlignOp:
    """One op, ``torch.ops.<name>.<name>`` and ``torch.ops.<name>.<name>_backward``, with its fallback.

    The compiled library ``<name>._C`` defines the two ops (schemas in align_registration.h):
    ``<name>(features, rois, aligned_height, aligned_width, spatial_scale, avg_pool=False)``
    and ``<name>_backward(grad_output, rois, spatial_scale, batch_size, height, width,
    avg_pool=False)``, for CPU and CUDA. ``positions(rois, (H, W), grid_height, grid_width,
    spatial_scale, dtype)`` is where the op samples, for the fallback: it returns ``h``, ``w``
    and ``keep`` broadcastable to ``(K, grid_height, grid_width)``.
    """

    def __init__(self, name: str, positions: Positions) -> None:
        self.name = name
        self.positions = positions
        self.kernels = load_kernel_library(name)
        self.compiled: Callable[..., Tensor] | None = None
        if self.kernels.available:
            register_fake_and_autograd(name)
            self.compiled = getattr(getattr(torch.ops, name), name)

    def __call__(
        self,
        features: Tensor,
        rois: Tensor,
        aligned_height: int,
        aligned_width: int,
        spatial_scale: float,
        avg_pool: bool,
        backend: Backend,
    ) -> Tensor:
        compiled = self.compiled if self.kernels.use_compiled(backend) else None
        if compiled is not None:
            return compiled(features, rois, aligned_height, aligned_width, spatial_scale, avg_pool)
        return self.python(features, rois, aligned_height, aligned_width, spatial_scale, avg_pool)

    def python(
        self,
        features: Tensor,
        rois: Tensor,
        aligned_height: int,
        aligned_width: int,
        spatial_scale: float,
        avg_pool: bool = False,
    ) -> Tensor:
        """The op on the pure-PyTorch fallback (also a reference in the tests): check, place the samples, sample.

        With ``avg_pool`` the grid is one larger each way and 2x2 stride-1 average pooled.
        """
        check_align_inputs(self.name, features, rois, aligned_height, aligned_width, spatial_scale, avg_pool)
        batch_size, channels, height, width = features.shape
        rois = rois.detach()
        if not torch.compiler.is_compiling():
            check_batch_indices(self.name, rois, batch_size)
        dtype = compute_dtype(features.dtype)
        rois = rois.to(dtype)
        grid_height, grid_width = aligned_height + avg_pool, aligned_width + avg_pool
        h, w, keep = self.positions(rois, (height, width), grid_height, grid_width, spatial_scale, dtype)
        sampled = bilinear_sample(features, rois[:, 0].to(torch.int64), h, w, keep)
        if avg_pool and channels == 0:  # avg_pool2d refuses empty channels; the kernels return (K, 0, h, w)
            return sampled[..., :aligned_height, :aligned_width]
        return F.avg_pool2d(sampled, kernel_size=2, stride=1) if avg_pool else sampled


class AlignModule(nn.Module):
    """Base of the six modules: the plain op, or (``pooling`` "avg"/"max") the op at one
    more row and column followed by a 2x2 stride-1 average/max pool, as in GAIC.
    The average pool is fused into the op (``avg_pool=True``)."""

    def __init__(
        self,
        op: Callable[..., Tensor],
        pooling: Literal["avg", "max"] | None,
        aligned_height: int,
        aligned_width: int,
        spatial_scale: float,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_align_params(name, aligned_height, aligned_width, spatial_scale, pooled=pooling is not None)
        if backend not in BACKENDS:
            raise ValueError(f"{name}: backend must be one of {BACKENDS}, got {backend!r}")
        self.op = op
        self.pooling = pooling
        self.aligned_height = aligned_height
        self.aligned_width = aligned_width
        self.spatial_scale = float(spatial_scale)
        self.backend = backend

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        size, scale, backend = (self.aligned_height, self.aligned_width), self.spatial_scale, self.backend
        if self.pooling == "max":
            sampled = self.op(features, rois, size[0] + 1, size[1] + 1, scale, backend=backend)
            return F.max_pool2d(sampled, kernel_size=2, stride=1)
        return self.op(features, rois, *size, scale, avg_pool=self.pooling == "avg", backend=backend)

    def extra_repr(self) -> str:
        return (
            f"aligned_height={self.aligned_height}, aligned_width={self.aligned_width}, "
            f"spatial_scale={self.spatial_scale}, backend={self.backend!r}"
        )
