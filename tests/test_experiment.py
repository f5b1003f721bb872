"""How a training run starts and ends (untils/experiment.py): --resume continues only inside the
experiment folder its checkpoint came from; Ctrl-C and a full disk end with one line and leave every
file whole."""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import train_on_GAICD
from tests.conftest import small_training_options
from untils.cli import run_script
from untils.training import Trainer

FAST = small_training_options(96, 8) + [
    "--backbone",
    "mobilenetv2",
    "--keep_aspect_ratio",
    "false",
    "--warmup_epochs",
    "0",
    "--selection",
    "test",
]


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) and the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def one_epoch(six_image_demo, tmp_path_factory) -> Path:
    """An experiment trained one epoch: its last.pth (tests copy it, never write next to it)."""
    root = tmp_path_factory.mktemp("experiments")
    trainer = train_on_GAICD.main(
        FAST + ["--data-root", six_image_demo, "--max_epoch", "1", "--exp_root", str(root), "--exp_name", "run"]
    )
    return Path(trainer.checkpoint_dir) / "last.pth"


@pytest.mark.parametrize("folder", ["Downloads", "checkpoints"])
def test_resume_outside_its_experiment_is_refused_and_writes_nothing(one_epoch, tmp_path, folder):
    """As ``--resume ~/Downloads/last.pth`` (or ``~/checkpoints/last.pth``) with the user's own
    config.json and results.csv in the home folder: refused with one line, nothing there changed."""
    home = tmp_path / "home"
    (home / folder).mkdir(parents=True)
    (home / "config.json").write_text('{"editor": "vim", "exp_name": "mine"}\n')
    (home / "results.csv").write_text("month,total\njanuary,3\n")
    copy = home / folder / "last.pth"
    shutil.copy(one_epoch, copy)
    before = _files(home)
    with pytest.raises(SystemExit) as refused:
        train_on_GAICD.main(["--resume", str(copy), "--max_epoch", "2", "--no-progress"])
    message = str(refused.value.code)
    assert str(copy) in message and "\n" not in message
    assert _files(home) == before


def test_a_whole_experiment_folder_moved_elsewhere_resumes(one_epoch, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(one_epoch.parent.parent, moved)
    resumed = train_on_GAICD.main(
        ["--resume", str(moved / "checkpoints" / "last.pth"), "--max_epoch", "2", "--no-progress"]
    )
    assert resumed.epoch == 2 and Path(resumed.exp_path) == moved
    assert torch.load(moved / "checkpoints" / "last.pth", weights_only=True)["epoch"] == 2


def test_resume_cannot_move_the_experiment(one_epoch, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(one_epoch.parent.parent, copy)
    before = _files(tmp_path)
    with pytest.raises(SystemExit, match="exp_root cannot change on --resume"):
        train_on_GAICD.main(["--resume", str(copy / "checkpoints" / "last.pth"), "--exp_root", str(tmp_path / "x")])
    assert _files(tmp_path) == before


def _interrupt_at(step: int):
    """Trainer.compute_loss raising KeyboardInterrupt (as Ctrl-C does) at global step ``step``."""
    original = Trainer.compute_loss

    def compute_loss(trainer: Trainer, batch: dict):
        if trainer.step == step:
            raise KeyboardInterrupt
        return original(trainer, batch)

    return compute_loss


def test_ctrl_c_ends_with_one_line_giving_the_resume_command(six_image_demo, tmp_path, monkeypatch, capsys):
    """Interrupted in the second epoch (step 8 of 6 per epoch): exit status 130, one line on stderr with
    the command that resumes from the first epoch's last.pth, which stays whole and resumes."""
    monkeypatch.setattr(Trainer, "compute_loss", _interrupt_at(8))
    argv = FAST + ["--data-root", six_image_demo, "--max_epoch", "2", "--exp_root", str(tmp_path), "--exp_name", "run"]
    with pytest.raises(SystemExit) as stopped:
        run_script(train_on_GAICD.main, argv)
    assert stopped.value.code == 130
    last = tmp_path / "run" / "checkpoints" / "last.pth"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"--resume {last}"), lines
    assert "python " in lines[0] and "Traceback" not in lines[0]
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not [path for path in last.parent.iterdir() if path.name.startswith(".tmp")]
    monkeypatch.undo()
    resumed = train_on_GAICD.main(["--resume", lines[0].split("--resume ")[1], "--no-progress"])
    assert resumed.epoch == 2


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(
    six_image_demo, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(Trainer, "compute_loss", _interrupt_at(2))
    with pytest.raises(SystemExit) as stopped:
        run_script(
            train_on_GAICD.main,
            FAST
            + ["--data-root", six_image_demo, "--max_epoch", "1", "--exp_root", str(tmp_path), "--exp_name", "run"],
        )
    assert stopped.value.code == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "nothing to resume" in lines[0], lines


FULL_DISK = {
    "OSError": OSError(errno.ENOSPC, "No space left on device"),
    # what torch.save's zip writer raises when the disk fills (seen writing to /dev/full)
    "zip writer": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
}


@pytest.mark.parametrize("error", sorted(FULL_DISK))
def test_full_disk_while_saving_a_checkpoint_ends_with_one_line_and_keeps_the_last_one(
    six_image_demo, tmp_path, monkeypatch, error
):
    """The second epoch's last.pth cannot be written: training stops with one line naming it; the
    first epoch's last.pth is byte for byte as it was and no partial file is left."""
    original_save = torch.save
    saves = []

    def filling_save(obj, path, *args, **kwargs):
        if str(path).endswith("last.pth"):
            saves.append(path)
            if len(saves) == 2:
                with open(path, "wb") as stream:
                    stream.write(b"PK\x03\x04 half a checkpoint")  # what a full disk leaves
                raise FULL_DISK[error]
        return original_save(obj, path, *args, **kwargs)

    checkpoints = tmp_path / "run" / "checkpoints"
    before = {}
    original_epoch = Trainer.train_epoch

    def epoch_recording_files(trainer):
        if trainer.epoch == 1:
            before.update(_files(checkpoints))
        return original_epoch(trainer)

    monkeypatch.setattr(torch, "save", filling_save)
    monkeypatch.setattr(Trainer, "train_epoch", epoch_recording_files)
    with pytest.raises(SystemExit) as stopped:
        train_on_GAICD.main(
            FAST + ["--data-root", six_image_demo, "--max_epoch", "2", "--exp_root", str(tmp_path), "--exp_name", "run"]
        )
    message = str(stopped.value.code)
    last = checkpoints / "last.pth"
    assert message.startswith(f"error: could not write {last} (") and "\n" not in message, message
    assert f"--resume {last}" in message
    if error == "OSError":
        assert "No space left on device" in message
    assert before["last.pth"] == _files(checkpoints)["last.pth"]
    assert sorted(_files(checkpoints)) == sorted(before)  # no temporary file left
