"""Writes done in background threads while the main thread goes on (crop.py scores the next photos
while the last ones' crops are encoded and written), handed back in the order they were submitted.

At most ``max_pending`` writes wait at a time: submitting one more waits for the oldest. When the
``with`` block ends by an exception (Ctrl-C), writes not yet started are cancelled and the running
ones finish, so each set of outputs is whole or absent (:func:`untils.crop_outputs.write_outputs`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, Generic, TypeVar

Tag = TypeVar("Tag")


class BackgroundWrites(Generic[Tag]):
    """``submit(tag, write, *args)`` runs ``write(*args)`` in a thread; :meth:`submit` and :meth:`finish`
    return the ``(tag, future)`` pairs done so far, oldest first, each future finished."""

    def __init__(self, threads: int, max_pending: int) -> None:
        if threads < 1 or max_pending < 1:
            raise ValueError(f"threads={threads} and max_pending={max_pending} must be at least 1")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="output-writer")
        self._pending: deque[tuple[Tag, Future]] = deque()
        self._max_pending = max_pending

    def submit(self, tag: Tag, write: Callable[..., Any], *args: Any) -> list[tuple[Tag, Future]]:
        self._pending.append((tag, self._pool.submit(write, *args)))
        return self._collect(everything=False)

    def finish(self) -> list[tuple[Tag, Future]]:
        """Every write still pending, waited for."""
        return self._collect(everything=True)

    def _collect(self, everything: bool) -> list[tuple[Tag, Future]]:
        done = []
        while self._pending and (everything or self._pending[0][1].done() or len(self._pending) > self._max_pending):
            tag, future = self._pending.popleft()
            wait([future])
            done.append((tag, future))
        return done

    def __enter__(self) -> BackgroundWrites[Tag]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=kind is not None)
