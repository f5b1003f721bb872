"""Shared fixtures: the read-only data in ../shared/data, two-process runs, a hard time limit.

Tests that need the shared data skip on a developer's machine without it, and fail under CI
(``CI=true``), where a missing folder means a broken checkout, not a choice.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("HCIC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


# No test comes near this; a hang must end the run with a stack trace, not use up CI's clock.
HARD_LIMIT_S = 900
_STDERR_FD = None


def pytest_configure(config) -> None:
    global _STDERR_FD
    _STDERR_FD = os.dup(sys.stderr.fileno())  # the terminal's stderr, before output capturing


@pytest.fixture(autouse=True)
def hard_time_limit():
    """Past HARD_LIMIT_S a test prints every thread's stack and ends pytest with exit status 1."""
    faulthandler.dump_traceback_later(HARD_LIMIT_S, exit=True, file=_STDERR_FD)
    yield
    faulthandler.cancel_dump_traceback_later()


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
    (gaicd / "human_data_split.json").write_text(
        json.dumps({split: [n for n in group if n in humans] for split, group in SAMPLE_IMAGES.items()})
    )
    return root


@pytest.fixture(scope="session")
def six_image_demo(tmp_path_factory) -> str:
    """Generated GAICD-layout data (6 training, 2 test photos, seed 3) with its pseudo heat maps;
    tests read it and write their experiments elsewhere."""
    from config_GAICD import Config
    from cropping_dataset import heat_map_sources
    from untils.demo_data import build_demo_dataset
    from untils.pseudo_heatmaps import generate_heatmaps

    root = tmp_path_factory.mktemp("six_image_demo")
    build_demo_dataset(root, num_train=6, num_test=2, seed=3, long_side=256)
    cfg = Config(data_root=str(root))
    generate_heatmaps("GAICD", heat_map_sources("GAICD", cfg), cfg.heat_map_dir, workers=0)
    return str(root)


@pytest.fixture(scope="module")
def pic_release_root(tmp_path_factory) -> Path:
    """Generated PIC users rating the 24 fixed views, in our layout and (``PIC_release/``) the
    release's; no GAICD in this data root."""
    import config_PIC
    from convert_PIC_data import write_release_layout
    from pic_dataset import load_pic_data
    from untils.pic_synthetic import build_pic_benchmark

    root = tmp_path_factory.mktemp("pic_release")
    build_pic_benchmark(
        root,
        train_users_per_group=1,
        test_users_per_group=1,
        train_images=6,
        test_images=8,
        images_per_train_user=5,
        long_side=64,
        candidates="fixed",
    )
    data = load_pic_data(config_PIC.Config(data_root=str(root)))
    write_release_layout(data, str(root / "PIC_release"), shots=(2,), val_fraction=0.2, test_fraction=0.5)
    return root


@pytest.fixture(scope="session")
def demo_pic_prior(tmp_path_factory) -> str:
    """The demo PIC prior, made by the very commands ``app.py --demo`` runs
    (``untils.pic_demo.demo_prior_commands``) with fewer epochs; every test that personalizes shares it."""
    from untils.pic_demo import demo_prior_checkpoint, demo_prior_commands

    demo_dir = str(tmp_path_factory.mktemp("pic_demo"))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    fewer_epochs = (["--max_epoch", "3"], ["--prior_epochs", "5"])
    for command, epochs in zip(demo_prior_commands(demo_dir, sys.executable), fewer_epochs, strict=True):
        done = subprocess.run(
            [*command, *epochs], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return demo_prior_checkpoint(demo_dir)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, parent, ...); None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc: torchrun starts its workers in sessions of
    their own, out of reach of a signal to its process group."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:  # None: the process ended meanwhile
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run_two_processes(arguments: list[str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2`` (a free port each time).

    Past ``timeout`` every rank prints its Python stack (faulthandler, on SIGABRT) into the failure
    message and the launcher and all its workers are killed. Output goes to files, not pipes, so a
    worker that outlives the launcher cannot keep the test waiting."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *arguments]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=stdout, stderr=stderr, text=True, start_new_session=True
        )
        try:
            process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            workers = _descendants(process.pid)
            _signal_all([process.pid], signal.SIGSTOP)  # the launcher would stop the other ranks mid-dump
            for pid in workers:  # one at a time: their stacks go to one file
                _signal_all([pid], signal.SIGABRT)
                for _ in range(50):
                    if not process_alive(pid):
                        break
                    time.sleep(0.1)
            _signal_all([process.pid, *workers], signal.SIGKILL)
            process.wait()
        stdout.seek(0)
        stderr.seek(0)
        result = subprocess.CompletedProcess(command, process.returncode, stdout.read(), stderr.read())
    if timed_out:
        pytest.fail(
            f"torchrun did not finish in {timeout} s; each rank's stack:\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-12000:]}"
        )
    return result


@pytest.fixture()
def diverging_loss(monkeypatch):
    """train_on_GAICD's loss made NaN at every step: a run that diverges, with finite options."""
    import train_on_GAICD

    real_loss = train_on_GAICD.crop_training_loss

    def nan_loss(*args, **kwargs):
        loss, parts = real_loss(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(train_on_GAICD, "crop_training_loss", nan_loss)


def small_training_options(image_size: int, views: int) -> list[str]:
    """The options every quick CPU training run in the tests shares: random-init weights, the CPU, no
    workers, ``image_size`` squares, ``views`` crops an image, no progress bar."""
    return [
        "--pretrained",
        "false",
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--image_size",
        str(image_size),
        str(image_size),
        "--view_per_image",
        str(views),
        "--no-progress",
    ]
