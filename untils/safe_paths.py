"""File names that come from data (a CSV cell, a JSON key, a folder listing), and the one rule that
keeps them inside their folder: a relative path of non-empty parts, none of them "." or "..",
without NUL, that still lies inside the folder once symbolic links are resolved. Anything else is
refused with an error naming the value; every read or write of such a name goes through here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence


class UnsafeNameError(ValueError):
    """A name from data that would lead outside its folder (or is no file name at all)."""


def check_name(name: str) -> None:
    """Refuse a ``name`` that is not a plain relative path (the part of the rule that needs no folder)."""
    if not isinstance(name, str) or not name:
        raise UnsafeNameError(f"file name {name!r} must be a non-empty text")
    if "\0" in name:
        raise UnsafeNameError(f"file name {name!r} holds a NUL character")
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise UnsafeNameError(f"file name {name!r} is an absolute path; names are relative to their folder")
    separators = "/" + os.sep + (os.altsep or "")
    parts = name.translate({ord(sep): "/" for sep in separators}).split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeNameError(
            f"file name {name!r} has an empty, '.' or '..' part; names are plain paths inside their folder"
        )


def resolve_inside(folder: str, name: str) -> str:
    """``folder/name`` after :func:`check_name`, refused when symbolic links lead it outside ``folder``
    (the folder itself may be a link)."""
    check_name(name)
    path = os.path.join(folder, name)
    root, real = os.path.realpath(folder), os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise UnsafeNameError(f"file name {name!r} in {folder} leads outside it (through a symbolic link, to {real})")
    return path


def copy_named_files(
    names: Sequence[str], source_dir: str, target_dir: str, target_name: Callable[[str], str] = str
) -> None:
    """Copy each ``source_dir/name`` to ``target_dir/target_name(name)`` (subfolders created), both
    sides through :func:`resolve_inside`; a target that already exists (two names landing on one
    file) is refused, so nothing is overwritten."""
    os.makedirs(target_dir, exist_ok=True)
    for name in names:
        source = resolve_inside(source_dir, name)
        target = resolve_inside(target_dir, target_name(name))
        if os.path.lexists(target):
            raise UnsafeNameError(f"file name {name!r} would be written as {target}, which another name already wrote")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)
