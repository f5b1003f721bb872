"""The web server's uploads: a bounded folder of photos and their rankings, one sub-folder per photo
named by a random id. Its one rule: no client-given text ever becomes a path; a photo id is checked
to be one of ours (32 hex digits) before it names a folder, and the oldest photos go past the cap.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

from untils.atomic import write_atomic, write_json_atomic

PHOTO_ID = re.compile(r"^[0-9a-f]{32}$")
PHOTO_FILE = "photo"
RANKING_FILE = "ranking.json"
HEAT_MAP_FILE = "heat_map.png"


class UnknownPhotoError(LookupError):
    """No stored photo has this id (never one, or removed as the oldest)."""


class PhotoStore:
    """Photos under ``root/photos/<id>/``: the uploaded bytes, the ranking JSON and the heat map.
    At most ``max_photos`` are kept; storing one more removes the oldest, but never one still being
    ranked (stored, its ranking not saved yet)."""

    def __init__(self, root: str | os.PathLike, max_photos: int) -> None:
        if max_photos < 1:
            raise ValueError(f"--max-photos must be >= 1, got {max_photos}")
        self.folder = Path(root) / "photos"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_photos = max_photos
        self._lock = threading.Lock()
        self._in_progress: set[str] = set()

    def path(self, photo_id: str) -> Path:
        """The folder of a stored photo; :class:`UnknownPhotoError` for anything else."""
        if not PHOTO_ID.match(photo_id):
            raise UnknownPhotoError(f"no photo {photo_id!r}: photo ids are 32 hex digits")
        folder = self.folder / photo_id
        if not folder.is_dir():
            raise UnknownPhotoError(f"no photo {photo_id}: never uploaded here, or removed as the oldest")
        return folder

    def add(self, content: bytes) -> str:
        """Store an upload's bytes under a new id (the oldest photos beyond the cap are removed)."""
        photo_id = secrets.token_hex(16)
        folder = self.folder / photo_id
        folder.mkdir()
        with self._lock:
            self._in_progress.add(photo_id)

        def write(tmp: str) -> None:
            Path(tmp).write_bytes(content)

        write_atomic(folder / PHOTO_FILE, write)
        self._prune()
        return photo_id

    def remove(self, photo_id: str) -> None:
        with self._lock:
            self._in_progress.discard(photo_id)
        if PHOTO_ID.match(photo_id):
            shutil.rmtree(self.folder / photo_id, ignore_errors=True)

    def photo_file(self, photo_id: str) -> Path:
        return self.path(photo_id) / PHOTO_FILE

    def save_ranking(self, photo_id: str, ranking: dict[str, Any]) -> None:
        write_json_atomic(self.path(photo_id) / RANKING_FILE, ranking)
        with self._lock:
            self._in_progress.discard(photo_id)

    def ranking(self, photo_id: str) -> dict[str, Any]:
        try:
            return json.loads((self.path(photo_id) / RANKING_FILE).read_text())
        except FileNotFoundError:
            raise UnknownPhotoError(f"photo {photo_id} has no ranking yet") from None

    def heat_map_file(self, photo_id: str) -> Path | None:
        path = self.path(photo_id) / HEAT_MAP_FILE
        return path if path.is_file() else None

    def _prune(self) -> None:
        """Remove the oldest photos beyond the cap, never one being ranked."""
        with self._lock:
            stored = []
            for entry in os.scandir(self.folder):
                if entry.is_dir() and PHOTO_ID.match(entry.name) and entry.name not in self._in_progress:
                    try:
                        stored.append((entry.stat().st_mtime, entry.name))
                    except FileNotFoundError:  # removed meanwhile
                        continue
            stored.sort()
            for _, name in stored[: max(0, len(stored) + len(self._in_progress) - self.max_photos)]:
                shutil.rmtree(self.folder / name, ignore_errors=True)
