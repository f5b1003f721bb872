"""untils.jobs.JobRunner with job functions of its own (its seam: any importable function): a job
that reports progress and returns, one that raises, one whose process dies, and a second job for a
key while one is queued. The web server's jobs with the real engine: tests/test_app_ratings.py."""

from __future__ import annotations

import math
import os
import time

import pytest

from untils.jobs import JobConflict, JobRunner, UnknownJob


def reporting(seconds: float, fail: bool, progress) -> dict:
    progress(0.5, "half way")
    time.sleep(seconds)
    if fail:
        raise ValueError("ratings.csv: line 3 is not a rating")
    return {"photos": 3, "seconds": 0.25, "train_srcc": math.nan, "name": "ana", "boxes": [1, 2]}


def dying(progress) -> dict:
    os._exit(3)


def finished(runner: JobRunner, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (state := runner.get(job_id).to_json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return state


def test_progress_result_failure_and_a_refused_second_job():
    runner = JobRunner(reporting)
    try:
        slow = runner.submit("ana", lambda: {"seconds": 1.0, "fail": False})
        with pytest.raises(JobConflict, match="ana"):
            runner.submit("ana", lambda: pytest.fail("prepare must not run for a refused job"))
        failing = runner.submit("bo", lambda: {"seconds": 0.0, "fail": True})
        assert runner.get(failing.id).state == "queued"  # one job at a time
        done = finished(runner, slow.id)
        assert done["progress"] == 1 and done["message"] == "done"
        assert done["result"] == {"photos": 3, "seconds": 0.25, "name": "ana"}  # NaN and lists left out
        failed = finished(runner, failing.id)
        assert failed["state"] == "failed" and failed["message"] == "ratings.csv: line 3 is not a rating"
        assert failed["progress"] == 0.5
        assert runner.submit("ana", lambda: {"seconds": 0.0, "fail": False}).state == "queued"
        with pytest.raises(UnknownJob):
            runner.get("nope")
    finally:
        runner.close()


def test_a_dead_process_fails_its_job():
    runner = JobRunner(dying)
    try:
        state = finished(runner, runner.submit("ana", dict).id)
        assert state["state"] == "failed" and "exit code 3" in state["message"]
    finally:
        runner.close()
