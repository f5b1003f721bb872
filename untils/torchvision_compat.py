"""Import torchvision without its compiled ops.

torchvision 0.28 is a CUDA build. On a CPU-only torch its ``_C`` library does not
load, and ``import torchvision`` then fails while registering fake kernels for
``torchvision::nms``/``qnms``, operators that were never defined. We only need the
model definitions, weights and transforms, so on that failure we declare the two
schemas (without kernels) and import again. Calling ``torchvision.ops.nms`` still
fails loudly, which is fine: this project never depends on torchvision's ops.
"""

from __future__ import annotations

import sys
import types

import torch

_schema_library = None


def _forget_partial_import() -> None:
    for name in list(sys.modules):
        if name == "torchvision" or name.startswith("torchvision."):
            del sys.modules[name]


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, importable even when its ``_C`` ops are missing."""
    global _schema_library
    try:
        import torchvision

        return torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    _forget_partial_import()
    _schema_library = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}"):
            try:
                _schema_library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass  # already declared by an earlier attempt
    import torchvision

    return torchvision


torchvision = import_torchvision()
models = torchvision.models
transforms = torchvision.transforms
