"""Checkpoints: atomic writes, and loading ours or the official release's into a model.

Our checkpoints are dicts with ``model`` (state_dict), ``config`` (the options the model was
built with), ``model_type`` and, for training checkpoints, optimizer/scheduler/RNG state. The
release saved a bare state_dict (some early ones name ``group_conv`` ``p_conv``); both load.
Every file is loaded with ``weights_only=True``: anything but tensors and plain data is refused,
since unpickling it may run code, unless the user trusts the file (``--trust-checkpoint``).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from typing import Any, Optional

import torch

from untils.atomic import write_atomic


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` all or nothing (:func:`untils.atomic.write_atomic`), flushed to disk."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda tmp_path: torch.save(obj, tmp_path), durable=True)


# What the weights-only unpickler says when it meets an object it will not build (a class, a
# function to call); anything else it raises means the file is damaged or not a checkpoint.
_REFUSED_OBJECT = re.compile(r"GLOBAL (?P<name>\S+)|unrecognized function (?P<function>.+?)(?: which|$)"
                             r"|create new object .* but got (?P<cls>.+)$", re.MULTILINE)


def load_file(path: str, what: str, error_type: type[Exception], trusted: bool = False) -> Any:
    """``torch.load`` of ``path`` on the CPU, accepting only tensors and plain data unless ``trusted``.

    ``error_type`` names ``what`` and the path when the file is missing, unreadable, or holds other
    objects (unpickling those may run code). ``trusted`` loads them anyway: only for files the user
    made themselves with an older version of this project.
    """
    if not os.path.isfile(path):
        raise error_type(f"{what} {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        refused = None if trusted else _REFUSED_OBJECT.search(str(error))
        if refused is None:
            raise error_type(f"{what} {path!r} could not be read (UnpicklingError: {_cause(error)})") from error
        found = refused.group("name") or refused.group("function") or refused.group("cls")
        raise error_type(
            f"{what} {path!r} holds objects other than tensors and plain data"
            f"{f' ({found})' if found else ''}, and loading them may run code: refused. If you made this file "
            "yourself with an older version of this project, --trust-checkpoint loads it anyway (unsafe)") from None
    except Exception as error:
        raise error_type(f"{what} {path!r} could not be read ({type(error).__name__}: {_cause(error)})") from error


def _cause(error: BaseException) -> str:
    """The line of ``error`` that says what went wrong (torch's unpickling errors add lines of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation",
                                                               "Please file an issue"))]
    return (causes or lines or [repr(error)])[0]


def read_checkpoint(path: str, trusted: bool = False) -> dict:
    """Load a checkpoint file on the CPU (see :func:`load_file` for ``trusted``).

    Ours is returned as is; a bare state_dict (the HCIC, GAIC and PIC releases, DataParallel
    ``module.`` prefixes included) or a ``{"state_dict": ...}`` file (``.pth.tar``) is wrapped as
    ``{"model": state_dict}``.
    """
    content = load_file(path, "checkpoint", CheckpointError, trusted=trusted)
    if isinstance(content, dict) and "model" in content and isinstance(content["model"], dict):
        return content
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if isinstance(content, dict) and content and all(torch.is_tensor(v) for v in content.values()):
        return {"model": content}
    raise CheckpointError(f"checkpoint {path!r} holds neither a state_dict nor a training checkpoint")


def release_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys of early official checkpoints (``p_conv`` became ``group_conv``) and drop DDP prefixes."""
    renamed = {}
    for name, value in state_dict.items():
        if name.startswith("module."):
            name = name[len("module."):]
        renamed[name.replace("partition_aware.p_conv", "partition_aware.group_conv")] = value
    return renamed


def load_model_weights(model: torch.nn.Module, checkpoint: dict | str) -> None:
    """Load weights strictly, with an error naming the missing and unexpected parameters."""
    if isinstance(checkpoint, str):
        source, checkpoint = checkpoint, read_checkpoint(checkpoint)
    else:
        source = "checkpoint"
    state = release_state_dict(checkpoint["model"])
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(n for n in set(own) & set(state) if own[n].shape != state[n].shape)
    if missing or unexpected or mismatched:
        def head(names):
            return ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
        problems = []
        if missing:
            problems.append(f"missing: {head(missing)}")
        if unexpected:
            problems.append(f"unexpected: {head(unexpected)}")
        if mismatched:
            problems.append(f"shape differs: {head(mismatched)}")
        raise CheckpointError(f"{source} does not fit the model built from its config ({'; '.join(problems)}). "
                              "Pass the options it was trained with (e.g. --backbone, --partition_aware_type).")
    model.load_state_dict(state, strict=True)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_from_checkpoint(checkpoint: dict, config_cls: type, overrides: Optional[dict] = None) -> Any:
    """The config stored in ``checkpoint`` (or the defaults for the release's bare state_dicts).

    ``overrides`` (e.g. data paths, device) win over the stored values; options the stored config
    does not know are ignored, so checkpoints survive new options.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    stored = {k: v for k, v in checkpoint.get("config", {}).items() if k in known}
    for name in [k for k in stored if k.endswith(("_path", "_image", "_anno", "_human", "_split", "_heat_map",
                                                   "_dir", "_pkl")) or k in ("data_root", "exp_root", "exp_name")]:
        stored.pop(name)  # paths belong to the machine that trained, not this one
    stored.update(overrides or {})
    stored["pretrained"] = False  # the checkpoint supplies every weight
    return config_cls(**stored)
