"""The one way files and folders are written here: all or nothing, and with the user's umask
(JSON strictly: no NaN or infinity).

Every output (checkpoints, CSVs, heat maps, crops, figures, reports) goes through a uniquely named
hidden file in the target's folder that is renamed onto the target once complete: a crash or a
second process writing the same file never leaves a half-written or mixed one behind.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]


def _temporary_path(path: PathLike) -> str:
    """A unique hidden name beside ``path``, in the same folder (so the final rename is atomic)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".tmp-{secrets.token_hex(6)}-{name}")


def write_atomic(path: PathLike, write: Callable[[str], None], durable: bool = False) -> None:
    """Call ``write(temporary path)``, then rename the temporary file onto ``path``. The temporary file
    is created with mode 0o666 (so the umask applies, as to any new file); ``durable`` also flushes
    it to disk first (checkpoints: a power cut must not leave a renamed but empty file)."""
    tmp_path = _temporary_path(path)
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp_path)
        if durable:
            with open(tmp_path, "rb") as stream:
                os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def copy_file_atomic(source: PathLike, target: PathLike) -> None:
    """Copy ``source`` to ``target`` (its folder made when missing), durably: ``target`` is either the
    whole copy or left as it was."""

    def copy(temporary: str) -> None:
        shutil.copyfile(source, temporary)

    os.makedirs(os.path.dirname(os.fspath(target)) or ".", exist_ok=True)
    write_atomic(target, copy, durable=True)


def write_text_atomic(path: PathLike, text: str) -> None:
    """:func:`write_atomic` of a text file."""

    def write(tmp_path: str) -> None:
        with open(tmp_path, "w", newline="") as stream:
            stream.write(text)

    write_atomic(path, write)


def write_folder_atomic(path: PathLike, overwrite: bool, write: Callable[[str], None]) -> None:
    """Call ``write(folder)`` on a hidden new folder beside ``path``, renamed onto ``path`` once whole:
    an error leaves nothing behind, and an existing folder (replaced only with ``overwrite``) stays as
    it was until then. Folders above ``path`` are created as needed (and removed again on an error)."""

    def check_replaceable() -> None:
        if os.path.exists(path) and not (overwrite and os.path.isdir(path)):
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True (--overwrite) to replace it"
                if os.path.isdir(path)
                else f"{path} exists and is not a folder"
            )

    path = os.fspath(path)
    check_replaceable()
    parent = os.path.dirname(os.path.abspath(path))
    first_missing, folder = None, parent  # the highest folder above path that this call creates
    while not os.path.isdir(folder):
        first_missing, folder = folder, os.path.dirname(folder)
    staging = _temporary_path(path)
    replaced = staging + "-replaced"
    os.makedirs(staging)
    try:
        write(staging)
        check_replaceable()
        if os.path.exists(path):
            os.replace(path, replaced)
        os.replace(staging, path)
    except BaseException:
        if os.path.isdir(replaced) and not os.path.exists(path):
            os.replace(replaced, path)  # the old folder back where it was
        shutil.rmtree(first_missing or staging, ignore_errors=True)
        raise
    shutil.rmtree(replaced, ignore_errors=True)


def json_text(content: Any, where: PathLike, indent: int | None = None) -> str:
    """``content`` as strict JSON text, the one way JSON is made here: NaN and infinity, which JSON has
    no words for (Python would write ``NaN``, which other readers refuse), are an error naming
    ``where`` (the file) and the value's place in ``content``."""
    try:
        return json.dumps(content, indent=indent, allow_nan=False)
    except ValueError:
        raise ValueError(
            f"{os.fspath(where)}: {_non_finite_place(content) or 'a value'} is not a finite number, "
            "which JSON cannot hold: not written"
        ) from None


def _non_finite_place(content: Any, place: str = "") -> str | None:
    """Where the first NaN or infinity of ``content`` is (``["metrics"]["srcc"] = nan``), if anywhere."""
    if isinstance(content, float) and not math.isfinite(content):
        return f"{place or 'the value'} = {content}"
    items: Iterable[tuple[Any, Any]]
    if isinstance(content, dict):
        items = content.items()
    elif isinstance(content, (list, tuple)):
        items = enumerate(content)
    else:
        return None
    for key, value in items:
        found = _non_finite_place(value, f"{place}[{key!r}]")
        if found:
            return found
    return None


def write_json_atomic(path: PathLike, content: Any, indent: int | None = None) -> None:
    """:func:`write_text_atomic` of :func:`json_text`."""
    write_text_atomic(path, json_text(content, path, indent))
