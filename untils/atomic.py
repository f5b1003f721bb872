"""The one way files are written here: all or nothing, and with the user's umask.

Every output (checkpoints, CSVs, heat maps, crops, figures, reports) goes through a uniquely named
hidden file in the target's folder that is renamed onto the target once complete: a crash or a
second process writing the same file never leaves a half-written or mixed one behind.
"""
from __future__ import annotations

import os
import secrets
from typing import Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def write_atomic(path: PathLike, write: Callable[[str], None], durable: bool = False) -> None:
    """Call ``write(temporary path)``, then rename the temporary file onto ``path``. The temporary file
    is created with mode 0o666 (so the umask applies, as to any new file); ``durable`` also flushes
    it to disk first (checkpoints: a power cut must not leave a renamed but empty file)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp_path = os.path.join(folder, f".tmp-{secrets.token_hex(6)}-{name}")
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


def write_text_atomic(path: PathLike, text: str) -> None:
    """:func:`write_atomic` of a text file."""
    def write(tmp_path: str) -> None:
        with open(tmp_path, "w", newline="") as stream:
            stream.write(text)
    write_atomic(path, write)
