"""The web server's one owner of the crop model: a thread that takes crop jobs from a queue and scores
the jobs waiting together as one batch, so concurrent requests never run the weights in parallel
threads (which would only oversubscribe the CPU).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from untils.cropper import Cropper, PersonInfo, PhotoFailure
from untils.person_detection import PersonDetector, choose_main_person
from untils.photos import Box, PhotoError, to_rgb8


@dataclass
class RatioRanking:
    """One ratio's candidates of a photo, best first (upright photo pixels)."""

    aspect_ratio: str
    boxes: list[Box]
    scores: list[float]
    candidates: str
    note: str | None = None


@dataclass
class PhotoRanking:
    """A photo ranked at several ratios: its size, the person used, the heat map, one entry per ratio."""

    width: int
    height: int
    person: PersonInfo
    heat_map: np.ndarray | None
    results: list[RatioRanking] = field(default_factory=list)


def rank_ratios(
    cropper: Cropper,
    images: Sequence[Image.Image],
    persons: Sequence[PersonInfo],
    aspect_ratios: Sequence[str],
    keep_person: bool,
    batch_size: int,
) -> list[PhotoRanking | str]:
    """Every photo ranked at every ratio in one pass (``Cropper.rank_many``: each photo decoded and run
    through the backbone once), in input order; a failing photo is its error message. The person each
    photo is scored with is ``persons[i]`` (given, detected or none) and is reported as such; with
    ``keep_person`` a ratio keeps only candidates holding that whole box, or says none does."""
    rankings: list[PhotoRanking | str] = [
        PhotoRanking(image.width, image.height, person, None) for image, person in zip(images, persons, strict=True)
    ]
    boxes = [person.box for person in persons]
    for result in cropper.rank_many(
        images, boxes, tuple(aspect_ratios), keep_person=keep_person, batch_size=batch_size, num_workers=0
    ):
        if isinstance(result, PhotoFailure):
            rankings[result.index] = result.message
            continue
        entry = rankings[result.index]
        if isinstance(entry, str):
            continue
        entry.heat_map = result.heat_map
        entry.results = [
            RatioRanking(ratio.aspect_ratio, ratio.boxes, ratio.scores, ratio.candidates, ratio.note)
            for ratio in result.results
        ]
    return rankings


@dataclass
class CropJob:
    """One photo to rank: its upright image, the person (a given box, detection, or none) and how."""

    image: Image.Image
    aspect_ratios: tuple[str, ...]
    human_box: tuple[float, float, float, float] | None = None
    detect_human: bool = False
    keep_person: bool = False
    future: Future = field(default_factory=Future)


class CropWorker:
    """A thread that owns ``cropper`` (and ``detector``): :meth:`submit` queues a job and returns a
    future of its :class:`PhotoRanking`; the jobs waiting when the thread is free (at most
    ``max_jobs``) are scored together, ``photos_per_batch`` photos per forward pass."""

    def __init__(
        self, cropper: Cropper, detector: PersonDetector | None = None, *, max_jobs: int = 8, photos_per_batch: int = 4
    ) -> None:
        if max_jobs < 1 or photos_per_batch < 1:
            raise ValueError(f"max_jobs and photos_per_batch must be >= 1, got {max_jobs} and {photos_per_batch}")
        self.cropper, self.detector = cropper, detector
        self.max_jobs, self.photos_per_batch = max_jobs, photos_per_batch
        self.batches_scored = 0
        self._queue: queue.Queue[CropJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="crop-worker", daemon=True)
        self._thread.start()

    def submit(self, job: CropJob) -> Future:
        if job.detect_human and self.detector is None:
            raise ValueError("detect_human: this server has no person detector")
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Let the queued jobs finish, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_jobs:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:  # close() after these: serve them, then stop
                    self._serve(jobs)
                    return
                jobs.append(waiting)
            self._serve(jobs)

    def _person(self, job: CropJob) -> PersonInfo:
        if job.human_box is not None:
            return PersonInfo(job.human_box, "given")
        if not job.detect_human or self.detector is None:
            return PersonInfo(None, "none")
        rgb = np.asarray(to_rgb8(job.image))
        detections = choose_main_person(self.detector(rgb), job.image.width, job.image.height)
        main = next((detection for detection in detections if detection.main), None)
        box = None if main is None else (float(main.box[0]), float(main.box[1]), float(main.box[2]), float(main.box[3]))
        return PersonInfo(box, "detected" if box else "none", detections, getattr(self.detector, "name", None))

    def _serve(self, jobs: list[CropJob]) -> None:
        """Score ``jobs``: one batch per (ratios, keep_person) among them; every future gets its answer."""
        groups: dict[tuple[tuple[str, ...], bool], list[tuple[CropJob, PersonInfo]]] = {}
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                person = self._person(job)
            except Exception as error:  # a failing detector fails this request, not the server
                job.future.set_exception(error)
                continue
            groups.setdefault((job.aspect_ratios, job.keep_person), []).append((job, person))
        for (ratios, keep_person), members in groups.items():
            try:
                rankings = rank_ratios(
                    self.cropper,
                    [job.image for job, _ in members],
                    [person for _, person in members],
                    ratios,
                    keep_person,
                    self.photos_per_batch,
                )
            except Exception as error:  # e.g. a ratio the model refuses: answer, and keep serving
                for job, _ in members:
                    job.future.set_exception(error)
                continue
            self.batches_scored += 1
            for (job, _), ranking in zip(members, rankings, strict=True):
                if isinstance(ranking, str):
                    job.future.set_exception(PhotoError(ranking))
                else:
                    job.future.set_result(ranking)
