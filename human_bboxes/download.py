"""Download the release's human-box annotation files and verify their SHA-256 checksums.

    python human_bboxes/download.py --out ./dataset/human_bboxes
    python human_bboxes/download.py --verify-only ./dataset/human_bboxes

The files come from bcmi/Human-Centric-Image-Cropping at a pinned commit, so the
checksums below (of those exact files) never go stale. Then copy or link each
``<dataset>/`` file next to that dataset's images (see README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.request
from collections.abc import Sequence

RELEASE_COMMIT = "13ef56f865b233a378f08eb803efadf8b76f27f2"
RAW_URL = f"https://raw.githubusercontent.com/bcmi/Human-Centric-Image-Cropping/{RELEASE_COMMIT}/human_bboxes/"
CHECKSUMS = {
    "CPC/human_bboxes.json": "9194e7cf1257c374a98f4d77254e1fef12d748d796c6f4fc73f59980d92277e8",
    "FCDB/data_split.json": "78e0c738bf180bf1007e6cc12831b7fd9adf4a98e30b996104402fa0ec24b13a",
    "FCDB/human_bboxes.json": "e67e14d9a0a4e50cd1359cd7531600ee370f06bdd4ce14ed4cc1e50a69019be1",
    "FCDB/image_crop.json": "f5c92d9b6db94ef9270bcf6111b1e887ee66d9604827a21be2a5a514a7ba5beb",
    "FLMS/human_bboxes.json": "49bcaedfd8ddfd4e6bdb337aa1c5a10be63f414548a475f4c6db2b1ea3d314ac",
    "FLMS/image_crop.json": "dc68c9110a532e0a398dd400942c413e6e0a906ac95a802ea9e78e7cab9357e1",
    "GAICD/human_bboxes.json": "b28d41df0399c1bf1e6e755394a9adf5250daf5911b281144aa7fb8e15728580",
    "GAICD/human_data_split.json": "9f022bfd09f8c6c0758b7e608d9f5ff69d96026dd42279018aca09f73ba43bb1",
    "GAICD/image_crop.json": "040f2ce17b6ed12dbb4f4234401cfe304d2473d45d41c6ff8ef31bdd1dca2967",
    "GAICD/original_data_split.json": "80dca185f4fa730df51456238cae3772a905e3f30297752b23d0aa7b885c7a8f",
}
CHUNK_BYTES = 1 << 20


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(folder: str) -> list[str]:
    """Problems with the files under ``folder`` (missing or wrong checksum); empty when all match."""
    problems = []
    for relative, expected in CHECKSUMS.items():
        path = os.path.join(folder, relative)
        if not os.path.isfile(path):
            problems.append(f"missing {path}")
            continue
        actual = sha256_of(path)
        if actual != expected:
            problems.append(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")
    return problems


def download(folder: str, timeout_s: float = 60.0) -> None:
    """Fetch every file into ``folder``; each is checked before it replaces anything there."""
    for relative, expected in CHECKSUMS.items():
        target = os.path.join(folder, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isfile(target) and sha256_of(target) == expected:
            continue
        handle, temp_path = tempfile.mkstemp(prefix=".download.", dir=os.path.dirname(target))
        try:
            with (
                os.fdopen(handle, "wb") as out,
                urllib.request.urlopen(RAW_URL + relative, timeout=timeout_s) as response,
            ):
                out.write(response.read())
            actual = sha256_of(temp_path)
            if actual != expected:
                raise ValueError(f"downloaded {RAW_URL + relative} has sha256 {actual}, expected {expected}")
            os.replace(temp_path, target)
        finally:
            if os.path.exists(temp_path):
                os.remove(temp_path)
        print(f"fetched {relative}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Download the human-box annotation files of the ECCV 2022 release (bcmi/Human-Centric-Image-Cropping "
            f"at {RELEASE_COMMIT[:12]}) and verify their SHA-256 checksums."
        )
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", metavar="DIR", help="download into DIR (files already correct are kept)")
    action.add_argument("--verify-only", metavar="DIR", help="only check the files already in DIR")
    args = parser.parse_args(argv)
    folder = args.verify_only or args.out
    if args.out:
        download(folder)
    problems = verify(folder)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"all {len(CHECKSUMS)} files in {folder} match their checksums")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
