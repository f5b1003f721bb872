"""untils.background_writes: order kept, pending bounded, queued writes cancelled on an error."""

from __future__ import annotations

import threading
import time

import pytest

from untils.background_writes import BackgroundWrites


def test_results_come_back_in_submission_order_when_later_writes_finish_first():
    release_first = threading.Event()
    finished: list[int] = []

    def write(number: int) -> int:
        if number == 0:
            release_first.wait(10)
        finished.append(number)
        return number * 10

    collected = []
    with BackgroundWrites[int](threads=3, max_pending=5) as writes:
        for number in range(3):
            collected += writes.submit(number, write, number)
        deadline = time.monotonic() + 10
        while len(finished) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert finished == [1, 2] and collected == []  # 1 and 2 are done, but 0 is not: nothing handed back
        release_first.set()
        collected += writes.finish()
    assert [(tag, future.result()) for tag, future in collected] == [(0, 0), (1, 10), (2, 20)]


def test_submit_waits_for_the_oldest_beyond_max_pending():
    running = threading.Semaphore(0)
    gate = threading.Event()

    def write(number: int) -> None:
        running.release()
        gate.wait(10)

    with BackgroundWrites[int](threads=1, max_pending=2) as writes:
        assert writes.submit(0, write, 0) == [] and writes.submit(1, write, 1) == []
        threading.Timer(0.2, gate.set).start()
        begin = time.monotonic()
        done = writes.submit(2, write, 2)  # a third pending write: waits until the first is done
        assert time.monotonic() - begin >= 0.15
        assert done and done[0][0] == 0  # the oldest, and whatever else was done by then
        assert [tag for tag, _ in done + writes.finish()] == [0, 1, 2]


def test_an_error_in_the_block_cancels_the_writes_not_started_and_lets_the_running_one_finish():
    started, finished = [], []
    gate = threading.Event()

    def write(number: int) -> None:
        started.append(number)
        gate.wait(10)
        finished.append(number)

    with pytest.raises(KeyboardInterrupt), BackgroundWrites[int](threads=1, max_pending=10) as writes:
        for number in range(4):
            writes.submit(number, write, number)
        while not started:
            time.sleep(0.01)
        threading.Timer(0.1, gate.set).start()
        raise KeyboardInterrupt
    assert started == [0] and finished == [0]


def test_errors_of_a_write_reach_the_caller_through_its_future():
    def write() -> None:
        raise OSError("disk full")

    with BackgroundWrites[str](threads=2, max_pending=2) as writes:
        [(tag, future)] = writes.submit("photo.jpg", write) + writes.finish()
    assert tag == "photo.jpg" and isinstance(future.exception(), OSError)


def test_threads_and_pending_must_be_positive():
    for threads, pending in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match="must be at least 1"):
            BackgroundWrites(threads, pending)
