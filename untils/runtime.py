"""Devices, seeds and random-number state shared by the scripts."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def free_cpus() -> int:
    """CPUs this process may use that are not busy now (the last minute's load average), at least 1."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    return max(1, usable - busy)


def default_workers(limit: int = 4) -> int:
    """DataLoader workers: one fewer than the free CPUs (the main process needs one), at most ``limit``."""
    return min(limit, free_cpus() - 1)


def configure_threads() -> int:
    """Use as many torch threads as CPUs are free: on a busy machine more threads only contend
    (each parallel region waits for its slowest, descheduled thread). For evaluation and cropping;
    training keeps its thread count, since results depend on it and a resumed run must be exact."""
    threads = min(torch.get_num_threads(), free_cpus())
    torch.set_num_threads(threads)
    return threads


def resolve_device(name: str = "auto", gpu_id: int = 0) -> torch.device:
    """``auto`` picks ``cuda:gpu_id`` when CUDA is available, else the CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"--device {name} was asked for, but this torch build sees no CUDA device "
                f"(torch {torch.__version__}); use --device cpu"
            )
        if device.index is None:
            device = torch.device(f"cuda:{gpu_id}")
    return device


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` option (fp32, bf16, fp16); None for fp32 (no autocast)."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision={precision!r}; expected one of {', '.join(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; nothing when ``dtype`` is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The python, numpy, torch (and CUDA) random states as tensors and plain data only, so that a
    checkpoint holding them loads with ``torch.load(weights_only=True)``."""
    numpy_state = np.random.get_state()
    if not isinstance(numpy_state, tuple):  # the legacy tuple, as the global MT19937 always gives
        raise TypeError(f"numpy's global random state is a {type(numpy_state).__name__}, expected its legacy tuple")
    bit_generator, key, position, has_gauss, cached_gaussian = numpy_state
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": bit_generator,
            "key": torch.from_numpy(key.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (or numpy's own tuple, in checkpoints of older versions)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["bit_generator"],
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
