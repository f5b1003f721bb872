"""Checkpoints: atomic writes, and loading ours or the official release's into a model.

Our checkpoints are dicts with ``model`` (state_dict), ``config`` (the options the model was
built with), ``model_type`` and, for training checkpoints, optimizer/scheduler/RNG state. The
release saved a bare state_dict (some early ones name ``group_conv`` ``p_conv``); both load.
Every file is loaded with ``weights_only=True``: anything but tensors and plain data is refused,
since unpickling it may run code, unless the user trusts the file (``--trust-checkpoint``); and
before torch reads it, a file that is no PyTorch file or would unpack too large is refused.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import reprlib
import types
import typing
import warnings
import zipfile
from typing import Any, Union

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
_REFUSED_OBJECT = re.compile(
    r"GLOBAL (?P<name>\S+)|unrecognized function (?P<function>.+?)(?: which|$)"
    r"|create new object .* but got (?P<cls>.+)$",
    re.MULTILINE,
)
# The legacy (pre-zip) format starts with this number, pickled as an 8a 0a (LONG1, 10 bytes) opcode.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
MAX_CHECKPOINT_GB_ENV = "HCIC_MAX_CHECKPOINT_GB"
DEFAULT_MAX_CHECKPOINT_GB = 4.0  # over ten times our largest training checkpoint (ResNet50 with Adam: 0.35 GB)
# torch stores every entry uncompressed; a file that unpacks to this many times its size (and to more
# than INFLATION_FREE_BYTES) is a crafted zip, refused before anything is unpacked.
MAX_INFLATION = 100
INFLATION_FREE_BYTES = 64 * 2**20


def max_checkpoint_bytes(max_gb: float | None = None) -> int:
    """The size limit for checkpoints once unpacked: ``max_gb``, else ``$HCIC_MAX_CHECKPOINT_GB``,
    else :data:`DEFAULT_MAX_CHECKPOINT_GB`."""
    if max_gb is None:
        text = os.environ.get(MAX_CHECKPOINT_GB_ENV, "").strip()
        try:
            max_gb = float(text) if text else DEFAULT_MAX_CHECKPOINT_GB
        except ValueError:
            max_gb = float("nan")
        if not (math.isfinite(max_gb) and max_gb > 0):
            raise ValueError(f"{MAX_CHECKPOINT_GB_ENV}={text!r} must be a positive number of gigabytes")
    if not (math.isfinite(max_gb) and max_gb > 0):
        raise ValueError(f"the checkpoint size limit must be a positive number of gigabytes, got {max_gb!r}")
    return int(max_gb * 1e9)


def _check_container(path: str, what: str, error_type: type[Exception], max_bytes: int) -> None:
    """Refuse, before torch reads a byte of it, a file that is no checkpoint or would unpack too large."""
    with open(path, "rb") as stream:
        head = stream.read(32)
    over_limit = f"over the {max_bytes / 1e9:g} GB limit for checkpoints ({MAX_CHECKPOINT_GB_ENV}=N raises it)"
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head:  # the legacy format: stored as it is read
        size = os.path.getsize(path)
        if size > max_bytes:
            raise error_type(f"{what} {path!r} holds {size / 1e9:.2f} GB, {over_limit}: refused before reading it")
        return
    if not zipfile.is_zipfile(path):
        damaged = " (it starts as a zip file, so it may be truncated or damaged)" if head.startswith(b"PK") else ""
        raise error_type(f"{what} is not a PyTorch checkpoint (zip) file: {path}{damaged}")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise error_type(f"{what} {path!r} is a damaged zip file ({error})") from None
    unpacked = sum(entry.file_size for entry in entries)
    packed = max(sum(entry.compress_size for entry in entries), 1)
    if unpacked > max_bytes:
        raise error_type(
            f"{what} {path!r} would unpack to {unpacked / 1e9:.2f} GB, {over_limit}: refused before reading it"
        )
    if unpacked > INFLATION_FREE_BYTES and unpacked > MAX_INFLATION * packed:
        raise error_type(
            f"{what} {path!r} would inflate {unpacked / packed:.0f}-fold ({packed} bytes to {unpacked} "
            "once unpacked), which no checkpoint torch wrote does: refused before reading it"
        )


def load_file(
    path: str, what: str, error_type: type[Exception], trusted: bool = False, max_gb: float | None = None
) -> Any:
    """``torch.load`` of ``path`` on the CPU, accepting only tensors and plain data unless ``trusted``.

    ``error_type`` names ``what`` and the path when the file is missing, unreadable, not a PyTorch
    file, larger than :func:`max_checkpoint_bytes` (``max_gb``) once unpacked, or holds other objects
    (unpickling those may run code). ``trusted`` loads them anyway: only for files the user made
    themselves with an older version of this project. Every ``torch.load`` of the project is this one.
    """
    if os.path.isdir(path):
        raise error_type(f"{what} {path!r} is a directory, not a file")
    if not os.path.isfile(path):
        raise error_type(f"{what} {path!r} {'is not a regular file' if os.path.exists(path) else 'does not exist'}")
    try:
        max_bytes = max_checkpoint_bytes(max_gb)
    except ValueError as error:
        raise error_type(f"{what} {path!r}: {error}") from None
    try:
        _check_container(path, what, error_type, max_bytes)
    except OSError as error:
        raise error_type(f"{what} {path!r} could not be read ({error.strerror or error})") from None
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols it may not read, then says it cannot
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        refused = None if trusted else _REFUSED_OBJECT.search(str(error))
        if refused is None:
            raise error_type(f"{what} {path!r} could not be read (UnpicklingError: {_cause(error)})") from error
        found = refused.group("name") or refused.group("function") or refused.group("cls")
        raise error_type(
            f"{what} {path!r} holds objects other than tensors and plain data"
            f"{f' ({found})' if found else ''}, and loading them may run code: refused. If you made this file "
            "yourself with an older version of this project, --trust-checkpoint loads it anyway (unsafe)"
        ) from None
    except Exception as error:
        raise error_type(f"{what} {path!r} could not be read ({type(error).__name__}: {_cause(error)})") from error


# torch's advice around its errors (load with weights_only=False, allow-list globals) would have the
# user run the file's code: never passed on.
_ADVICE = re.compile(r"weights.only|safe_globals|file an issue|check the documentation", re.IGNORECASE)


def _cause(error: BaseException) -> str:
    """The line of ``error`` that says what went wrong, without torch's advice to load it unsafely."""
    lines = [line.replace("WeightsUnpickler error:", "").strip() for line in str(error).splitlines()]
    causes = [line for line in lines if line and not _ADVICE.search(line)]
    return (causes or ["the file is damaged or not a checkpoint"])[0]


def read_checkpoint(path: str, trusted: bool = False, max_gb: float | None = None) -> dict:
    """Load a checkpoint file on the CPU (see :func:`load_file` for ``trusted`` and ``max_gb``).

    Ours is returned as is; a bare state_dict (the HCIC, GAIC and PIC releases, DataParallel
    ``module.`` prefixes included) or a ``{"state_dict": ...}`` file (``.pth.tar``) is wrapped as
    ``{"model": state_dict}``.
    """
    content = load_file(path, "checkpoint", CheckpointError, trusted=trusted, max_gb=max_gb)
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
            name = name[len("module.") :]
        renamed[name.replace("partition_aware.p_conv", "partition_aware.group_conv")] = value
    return renamed


def with_batch_counters(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the BatchNorm ``num_batches_tracked`` counters it lacks taken from ``model``:
    files saved by PyTorch 0.4.0 and earlier (GAIC's release) have none. The counter only steps
    a cumulative running average, which these models never use, so scores are unchanged."""
    counters = {
        name: buffer
        for name, buffer in model.state_dict().items()
        if name.endswith(".num_batches_tracked")
        and name not in state
        and name.replace(".num_batches_tracked", ".running_mean") in state
    }
    return {**state, **counters}


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
        raise CheckpointError(
            f"{source} does not fit the model built from its config ({'; '.join(problems)}). "
            "Pass the options it was trained with (e.g. --backbone, --partition_aware_type)."
        )
    model.load_state_dict(state, strict=True)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of a config field's type (bool, int, float, str, lists and tuples of them, Optional)."""
    optional = typing.get_origin(annotation) in (Union, types.UnionType)
    options = typing.get_args(annotation) if optional else (annotation,)
    if value is None:
        return type(None) in options
    inner = next(option for option in options if option is not type(None))
    origin, items = typing.get_origin(inner), typing.get_args(inner)
    if inner is bool:
        return isinstance(value, bool)
    if inner in (int, float):
        return isinstance(value, (int, float) if inner is float else int) and not isinstance(value, bool)
    if inner is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        fixed = origin is tuple and Ellipsis not in items
        if fixed and len(value) != len(items):
            return False
        return all(_fits(item, items[index] if fixed else items[0]) for index, item in enumerate(value))
    return True  # a type the checks here do not know: left to the config's own validation


def stored_options(checkpoint: dict, config_cls: type, source: str = "checkpoint") -> dict:
    """The options of ``checkpoint["config"]`` that ``config_cls`` has (options an older version had and
    this one dropped are left out), each checked against its field's type; a CheckpointError names
    ``source`` (the checkpoint's path) and the option otherwise."""
    stored = checkpoint.get("config", {})
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: its saved config is a {type(stored).__name__}, not a dict")
    hints = typing.get_type_hints(config_cls)
    known = {field.name: hints[field.name] for field in dataclasses.fields(config_cls) if field.init}
    # None in a derived field (typed as its derived value) means "derive it", as on the command line
    derived = {field.name for field in dataclasses.fields(config_cls) if field.metadata.get("derived")}
    for name, value in stored.items():
        if name in known and not (value is None and name in derived) and not _fits(value, known[name]):
            raise CheckpointError(
                f"{source}: its saved config option {name}={reprlib.repr(value)} is not of the "
                f"option's type ({_type_name(known[name])})"
            )
    return {name: value for name, value in stored.items() if name in known}


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def build_config(config_cls: type, options: dict, source: str = "checkpoint") -> Any:
    """``config_cls(**options)`` for options read from the checkpoint ``source``: a value the config
    refuses is a CheckpointError naming ``source``."""
    try:
        return config_cls(**options)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {error}") from None


def config_from_checkpoint(
    checkpoint: dict, config_cls: type, overrides: dict | None = None, source: str = "checkpoint"
) -> Any:
    """The config stored in ``checkpoint`` (or the defaults for the release's bare state_dicts).

    ``overrides`` (e.g. data paths, device) win over the stored values; options the stored config
    does not know are ignored, so checkpoints survive new options. A stored option of the wrong
    type or value is a CheckpointError naming ``source`` (the file) and the option.
    """
    stored = stored_options(checkpoint, config_cls, source)
    for name in [
        k
        for k in stored
        if k.endswith(("_path", "_image", "_anno", "_human", "_split", "_heat_map", "_dir", "_pkl"))
        or k in ("data_root", "exp_root", "exp_name")
    ]:
        stored.pop(name)  # paths belong to the machine that trained, not this one
    stored.update(overrides or {})
    stored["pretrained"] = False  # the checkpoint supplies every weight
    return build_config(config_cls, stored, source)
