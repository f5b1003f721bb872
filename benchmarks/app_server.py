"""``python app.py`` started for a benchmark: on a free loopback port, answering before it is timed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Sequence[str], data_dir: Path, log: Path, wait_s: float = 300) -> tuple[subprocess.Popen, str]:
    """``python app.py MODEL...`` on a free loopback port, no person detector, answering within
    ``wait_s`` seconds: (process, its address)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "app.py"),
            *model,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--no-detector",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"app.py did not answer in {wait_s:g} s")
