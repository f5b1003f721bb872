"""The web server's personalized rankers: the prior (``--pic-prior``) and each user's own model
(``users/<user>/model.pth``), loaded on first use and again when the file changes.

Its one rule: a user's ranking comes from their own model when they have one, else from the prior,
and the models are run one at a time (the crop worker's thread keeps the cropping model).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from untils.ratings_store import RatingsStore

CACHED_MODELS = 8  # the prior and the users seen last stay loaded; a user's model is ~ a backbone in memory
Box = tuple[float, float, float, float]
Ranked = list[tuple[Box, float]]


class Ranker(Protocol):
    """What ``pic_model.load_pic_ranker`` returns: all candidates it scores, best first."""

    def rank(self, image: Image.Image, human_box: Box | None) -> Ranked: ...


@dataclass(frozen=True)
class Personalization:
    """How the server personalizes, handed over by app.py (``untils`` imports no top-level module):
    the prior's checkpoint, the loader of a prior or personal checkpoint, the fine-tuning function
    (run in a spawned process, so importable by name) and the fewest rated photos it takes, each
    with at least ``min_rated_crops`` rated crops."""

    prior_path: str
    load_ranker: Callable[[str], Ranker]
    personalize: Callable[..., dict]
    min_rated_photos: int
    min_rated_crops: int


@dataclass(frozen=True)
class UserRanking:
    """A user's ranking of a photo's candidates: ``kind`` "personal" (their model) or "prior"."""

    kind: str
    ranked: Ranked
    prior: Ranked  # the prior's ranking of the same candidates: the generic one beside it


class UserModels:
    """Loads and runs the prior and the users' models (cached by file and modification time, the
    :data:`CACHED_MODELS` used last)."""

    def __init__(self, personalization: Personalization, store: RatingsStore) -> None:
        self.personalization, self.store = personalization, store
        self._cache: OrderedDict[str, tuple[int, Ranker]] = OrderedDict()
        self._lock = threading.Lock()  # one model runs at a time

    def _ranker(self, path: str) -> Ranker:
        stamp = os.stat(path).st_mtime_ns
        cached = self._cache.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, self.personalization.load_ranker(path))
            self._cache[path] = cached
        self._cache.move_to_end(path)
        while len(self._cache) > CACHED_MODELS:
            self._cache.popitem(last=False)
        return cached[1]

    def rank(self, user: str, image: Image.Image, human_box: Box | None) -> UserRanking:
        """Run in a worker thread, never on the event loop."""
        model = self.store.model_file(user)
        with self._lock:
            prior = self._ranker(self.personalization.prior_path).rank(image, human_box)
            if not model.is_file():
                return UserRanking("prior", prior, prior)
            return UserRanking("personal", self._ranker(str(model)).rank(image, human_box), prior)

    def describe(self) -> dict[str, Any]:
        return {
            "prior": self.personalization.prior_path,
            "min_rated_photos": self.personalization.min_rated_photos,
            "min_rated_crops": self.personalization.min_rated_crops,
        }
