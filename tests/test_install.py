"""After the README's install, the project works outside its folder: modules import, commands run."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import _in_ci
from untils.commands import COMMANDS


def _command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH: run the README's install (pip install --no-build-isolation -e .)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_the_python_api_imports_outside_the_repository(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from crop import Cropper; import cropping_model, untils.training"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_shows_its_help(command, tmp_path):
    result = subprocess.run([_command(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command}")


def test_a_command_ends_on_one_error_line(tmp_path):
    result = subprocess.run(
        [_command("hcic-test"), "--checkpoint", str(tmp_path / "missing.pth")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: checkpoint")
    assert "Traceback" not in result.stderr
