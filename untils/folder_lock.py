"""A lock on an output folder, so two runs never mix their outputs in it: one lock file per process
(``.crop-lock-I-of-N`` for shard I of N), holding its pid and host.

A run is refused while a live lock of another run is there: one with its own shard, or of another
shard count. Shards of one sharded run (same N, other I) share the folder. A lock whose process is
gone (same host, no such pid) is stale and taken over; one of another host cannot be checked and
is kept (remove it by hand if that run is over).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from types import TracebackType

from untils.atomic import json_text

LOCK_NAME = re.compile(r"^\.crop-lock-(?P<index>\d+)-of-(?P<count>\d+)$")


class FolderLockedError(RuntimeError):
    """Another live run writes into the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner(path: Path) -> dict | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _is_stale(owner: dict | None) -> bool:
    if owner is None:  # unreadable or half-written by a process that died at once
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    return owner.get("host") == socket.gethostname() and not _alive(pid)


class FolderLock:
    """``with FolderLock(folder, shard=(I, N)):`` holds the folder's lock for shard I of N (0 of 1: a
    run that is not sharded); raises :class:`FolderLockedError` naming the run that holds it."""

    def __init__(self, folder: Path, shard: tuple[int, int] = (0, 1)) -> None:
        self.folder, self.shard = folder, shard
        self.path = folder / f".crop-lock-{shard[0]}-of-{shard[1]}"

    def _conflicts(self) -> list[tuple[Path, dict]]:
        found = []
        for path in self.folder.iterdir():
            match = LOCK_NAME.match(path.name)
            if match is None or path == self.path:
                continue
            owner = _owner(path)
            if int(match["count"]) != self.shard[1] and not _is_stale(owner):
                found.append((path, owner or {}))
        return found

    def __enter__(self) -> FolderLock:
        record = json_text(
            {"pid": os.getpid(), "host": socket.gethostname(), "shard": f"{self.shard[0]}/{self.shard[1]}"}, self.path
        )
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _owner(self.path)
                if not _is_stale(owner):
                    raise FolderLockedError(self._message(self.path, owner or {})) from None
                self.path.unlink(missing_ok=True)  # a dead process's lock: taken over
                continue
            with os.fdopen(descriptor, "w") as stream:
                stream.write(record)
            break
        else:
            raise FolderLockedError(f"{self.folder}: could not take its lock {self.path.name}")
        conflicts = self._conflicts()
        if conflicts:
            self.path.unlink(missing_ok=True)
            raise FolderLockedError(self._message(*conflicts[0]))
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        owner = _owner(self.path)
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def _message(self, path: Path, owner: dict) -> str:
        return (
            f"--out {self.folder}: another crop.py run writes there (pid {owner.get('pid', '?')} on "
            f"{owner.get('host', '?')}, shard {owner.get('shard', '?')}; lock {path}); wait for it or choose "
            "another --out (remove the lock if that run is over)"
        )
