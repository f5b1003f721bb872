"""Checkpoints: atomic writes, and loading ours or the official release's into a model.

Our checkpoints are dicts with ``model`` (state_dict), ``config`` (the options the model was
built with), ``model_type`` and, for training checkpoints, optimizer/scheduler/RNG state. The
release saved a bare state_dict (some early ones name ``group_conv`` ``p_conv``); both load.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Optional

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def load_file(path: str, what: str, error_type: type[Exception], weights_only: bool) -> Any:
    """``torch.load`` of ``path`` on the CPU; ``error_type`` naming ``what`` and the path when it is
    missing or unreadable."""
    if not os.path.isfile(path):
        raise error_type(f"{what} {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:
        raise error_type(f"{what} {path!r} could not be read ({type(error).__name__}: {error})") from error


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint file on the CPU; a bare state_dict is wrapped as ``{"model": state_dict}``."""
    content = load_file(path, "checkpoint", CheckpointError, weights_only=False)
    if isinstance(content, dict) and "model" in content and isinstance(content["model"], dict):
        return content
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
