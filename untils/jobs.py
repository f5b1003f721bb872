"""Background jobs of the web server (fine-tuning a user's model): one at a time, each in a freshly
spawned process, so training neither blocks the event loop nor competes with the serving thread
for the interpreter, and a crash of the job is not a crash of the server.

Its one rule: a job's state only moves queued -> running -> done | failed, its progress is in
[0, 1], and a failed job's message is one sentence saying why.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

JOBS_KEPT = 200  # finished jobs remembered for GET /api/jobs/ID; the oldest are forgotten
POLL_S = 0.2


class JobConflict(RuntimeError):
    """A job for this key is queued or running already."""


class UnknownJob(LookupError):
    """No job has this id (never one, or forgotten)."""


@dataclass
class Job:
    """One job: ``state`` queued | running | done | failed, ``progress`` in [0, 1], ``message``,
    and once done what the job function returned (``result``: plain JSON values)."""

    id: str
    key: str
    state: str = "queued"
    progress: float = 0.0
    message: str = "waiting for the jobs before it"
    result: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "user": self.key,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
            "result": self.result,
        }


def failure_sentence(error: BaseException) -> str:
    """An exception as one sentence: a ValueError's own words (it names the file or value), else its type too."""
    text = " ".join(str(error).split()) or "no details"
    return text if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {text}"


def _run_in_child(target: Callable[..., Any], kwargs: Mapping[str, Any], updates: Any) -> None:
    """The spawned process: ``target(**kwargs, progress=...)``, every progress call and the end sent to ``updates``."""

    def progress(fraction: float, message: str) -> None:
        updates.put(("progress", float(fraction), str(message)))

    try:
        result = target(**kwargs, progress=progress)
    except BaseException as error:  # the parent reports it; nothing else can
        updates.put(("failed", 0.0, failure_sentence(error)))
        return
    updates.put(("done", 1.0, result if isinstance(result, dict) else {}))


class JobRunner:
    """Runs ``target(**kwargs, progress=callback)`` jobs one at a time in spawned processes;
    :meth:`submit` refuses a second job for a key (a user) while one is queued or running."""

    def __init__(self, target: Callable[..., Any]) -> None:
        self.target = target
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._waiting: queue.Queue[tuple[Job, dict[str, Any]] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None  # the running job's process
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="job-runner", daemon=True)
        self._thread.start()

    def submit(self, key: str, prepare: Callable[[], dict[str, Any]]) -> Job:
        """Queue a job for ``key`` with the arguments ``prepare()`` returns: called only once no job
        of ``key`` is queued or running (so it may write the job's input files), never twice at once."""
        with self._lock:
            busy = next(
                (job for job in self._jobs.values() if job.key == key and job.state in ("queued", "running")), None
            )
            if busy is not None:
                raise JobConflict(f"a job for {key} is {busy.state} already ({busy.id}); wait for it to end")
            kwargs = prepare()
            job = Job(secrets.token_hex(8), key)
            self._jobs[job.id] = job
            while len(self._jobs) > JOBS_KEPT:
                oldest = next(iter(self._jobs.values()))
                if oldest.state not in ("done", "failed"):
                    break
                self._jobs.popitem(last=False)
        self._waiting.put((job, kwargs))
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r}: never started here, or forgotten")
        return job

    def close(self) -> None:
        """Stop: the running job's process is ended (its output is written atomically, so nothing is
        left half-written) and the queued jobs fail."""
        with self._lock:
            self._closing = True
            if self._process is not None:
                self._process.terminate()
        self._waiting.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._waiting.get()) is not None:
            job, kwargs = item
            if self._closing:
                self._update(job, "failed", 0.0, "the server stopped before this job started")
            else:
                self._run_one(job, kwargs)

    def _update(self, job: Job, state: str, progress: float, message: str) -> None:
        with self._lock:
            job.state, job.progress, job.message = state, min(max(progress, 0.0), 1.0), message

    def _run_one(self, job: Job, kwargs: dict[str, Any]) -> None:
        self._update(job, "running", 0.0, "starting the training process")
        updates = self._context.Queue()
        process = self._context.Process(target=_run_in_child, args=(self.target, kwargs, updates), daemon=True)
        try:
            with self._lock:
                if self._closing:
                    raise RuntimeError("the server is stopping")
                process.start()
                self._process = process
        except Exception as error:  # e.g. no memory for a process: the job fails, the server goes on
            self._update(job, "failed", 0.0, f"could not start the training process ({failure_sentence(error)})")
            return
        ended: tuple[str, float, Any] | None = None
        while ended is None:
            try:
                kind, fraction, payload = updates.get(timeout=POLL_S)
            except queue.Empty:
                if not process.is_alive():
                    time.sleep(POLL_S)  # its last message may still be in the pipe
                    if updates.empty():
                        ended = (
                            "failed",
                            0.0,
                            f"the training process ended unexpectedly (exit code {process.exitcode})",
                        )
                continue
            if kind == "progress":
                self._update(job, "running", fraction, payload)
            else:
                ended = (kind, fraction, payload)
        process.join()
        with self._lock:
            self._process = None
        kind, _, payload = ended
        if kind == "done":
            job.result = {  # only what JSON holds: a NaN or a tensor would break the job's answer
                key: value
                for key, value in payload.items()
                if isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value))
            }
            self._update(job, "done", 1.0, "done")
        else:
            self._update(job, "failed", job.progress, payload)
