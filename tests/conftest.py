"""Shared fixtures: the read-only data in ../shared/data.

Tests that need it skip on a developer's machine without it, and fail under CI
(``CI=true``), where a missing folder means a broken checkout, not a choice.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("HCIC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_shared(relative: str = "") -> Path:
    """Return ``SHARED_DATA/relative``; skip (or fail under CI) when it is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"shared test data not found: {path}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()


SAMPLE_IMAGES = {"train": ["211958.jpg"], "test": ["265813.jpg", "297406.jpg"]}


def build_gaicd_sample(root: Path, flat: bool = False) -> Path:
    """The three real GAICD sample photos in the release layout under ``root/GAICD``.

    Annotations are the real entries of the three photos; 297406.jpg (test) is the one
    human-centric image. ``flat`` puts every image in ``images/`` instead of train/ and test/.
    """
    import json
    import shutil

    source = require_shared("GAICD-sample/images")
    boxes = require_shared("human_bboxes/GAICD")
    gaicd = root / "GAICD"
    for split, names in SAMPLE_IMAGES.items():
        folder = gaicd / "images" if flat else gaicd / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(source / split / name, folder / name)
    names = [n for group in SAMPLE_IMAGES.values() for n in group]
    crops = json.loads((boxes / "image_crop.json").read_text())
    humans = json.loads((boxes / "human_bboxes.json").read_text())
    (gaicd / "image_crop.json").write_text(json.dumps({n: crops[n] for n in names}))
    (gaicd / "human_bboxes.json").write_text(json.dumps({n: humans[n] for n in names if n in humans}))
    (gaicd / "original_data_split.json").write_text(json.dumps(SAMPLE_IMAGES))
    (gaicd / "human_data_split.json").write_text(json.dumps(
        {split: [n for n in group if n in humans] for split, group in SAMPLE_IMAGES.items()}))
    return root


def run_two_processes(arguments: list[str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2`` (a free port each time); the whole process group
    is killed when it outlives ``timeout``, so no stray rank keeps running."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                *arguments], cwd=cwd, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
