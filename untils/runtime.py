"""Devices, seeds and random-number state shared by the scripts."""
from __future__ import annotations

import contextlib
import random
from typing import Optional

import numpy as np
import torch


def resolve_device(name: str = "auto", gpu_id: int = 0) -> torch.device:
    """``auto`` picks ``cuda:gpu_id`` when CUDA is available, else the CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} was asked for, but this torch build sees no CUDA device "
                               f"(torch {torch.__version__}); use --device cpu")
        if device.index is None:
            device = torch.device(f"cuda:{gpu_id}")
    return device


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a ``precision`` option (fp32, bf16, fp16); None for fp32 (no autocast)."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision={precision!r}; expected one of {', '.join(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; nothing when ``dtype`` is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
