"""Personalized cropping through the web server, as the issue's "done when" puts it:
``python app.py --demo``, users who rate crops of a few photos by a consistent taste, then the top
crops on photos they did not rate.

  python benchmarks/bench_app_personal.py                     # demo models in demo_runs/ (trained when absent)
  python benchmarks/bench_app_personal.py --rated 8 10 --crops-per-photo 24 --unseen 12

For each taste (the crop's centre left, or right, of the photo's centre: scores 5 .. 1 from the
offset, a rule written here) and each number of rated photos, one user rates ``--crops-per-photo``
of each photo's offered crops (spread over the offered ranking) through ``POST /api/ratings``, asks
``POST /api/personalize`` and polls the job to its end (the time reported: request to done, the
spawned process's start included). Then on ``--unseen`` other photos it counts the top crops on the
user's side: the user's (``personal.crops[0]``), the PIC prior's (``personal.generic[0]``) and the
cropping model's (``results[0].crops[0]``, the page's generic ranking). Photos: the GAIC demo's
generated people (untils.demo_data, a seed of their own).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app_server import start_server  # noqa: E402

from untils.cli import add_option_aliases  # noqa: E402
from untils.demo_data import build_demo_dataset  # noqa: E402

SIDES = {"left": -1, "right": +1}


def taste(box: list[float], width: float, side: int) -> int:
    offset = side * ((box[0] + box[2]) / 2 - width / 2) / width
    return 5 if offset > 0.06 else 4 if offset > 0.02 else 3 if offset >= -0.02 else 2 if offset >= -0.06 else 1


def on_side(box: list[float], width: float, side: int) -> bool:
    return side * ((box[0] + box[2]) / 2 - width / 2) > 0.02 * width


def crop(client: httpx.Client, url: str, photo: Path, user: str) -> dict:
    response = client.post(
        f"{url}/api/crop",
        files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"user": user, "top_k": "1"},
        timeout=600,
    )
    response.raise_for_status()
    return response.json()


def personalize(client: httpx.Client, url: str, user: str) -> tuple[str, float]:
    started = time.perf_counter()
    response = client.post(f"{url}/api/personalize", json={"user": user}, timeout=60)
    response.raise_for_status()
    job = response.json()["job"]
    while (state := client.get(f"{url}/api/jobs/{job}", timeout=60).json())["state"] not in ("done", "failed"):
        time.sleep(0.2)
    return state["message"] if state["state"] == "failed" else "done", time.perf_counter() - started


def run_user(client: httpx.Client, url: str, user: str, side: int, rated: list[Path], crops_per_photo: int):
    for photo in rated:
        answer = crop(client, url, photo, user)
        offered = answer["personal"]["ranked"]
        for item in offered[:: max(1, len(offered) // crops_per_photo)][:crops_per_photo]:
            body = {
                "user": user,
                "photo_id": answer["photo_id"],
                "box": item["box"],
                "score": taste(item["box"], answer["width"], side),
            }
            client.post(f"{url}/api/ratings", json=body, timeout=60).raise_for_status()
    return personalize(client, url, user)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default="demo_runs", help="app.py --demo-dir (default demo_runs)")
    parser.add_argument("--rated", type=int, nargs="+", default=[8, 10], help="rated photos per user (default 8 10)")
    parser.add_argument("--crops-per-photo", type=int, default=24, help="rated crops of each photo (default 24)")
    parser.add_argument("--unseen", type=int, default=12, help="photos no user rated (default 12)")
    parser.add_argument("--long-side", type=int, default=320, help="the photos' long side (default 320)")
    args = add_option_aliases(parser).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_demo_dataset(tmp, num_train=max(args.rated) + args.unseen, num_test=2, seed=23, long_side=args.long_side)
        photos = sorted((Path(tmp) / "GAICD" / "images" / "train").glob("*.jpg"))
        rated, unseen = photos[: max(args.rated)], photos[max(args.rated) :]
        process, url = start_server(
            ["--demo", "--demo-dir", args.demo_dir], Path(tmp) / "data", Path(tmp) / "server.log", wait_s=1800
        )
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; {date.today()}; "
            f"{args.crops_per_photo} rated crops per photo, {len(unseen)} unseen photos"
        )
        print("| taste | rated photos | personalize (s) | user's top crop on that side | prior's | cropping model's |")
        print("|---|---|---|---|---|---|")
        try:
            with httpx.Client() as client:
                for name, side in SIDES.items():
                    for count in args.rated:
                        user = f"{name}-{count}"
                        state, seconds = run_user(client, url, user, side, rated[:count], args.crops_per_photo)
                        mine = prior = model = 0
                        for photo in unseen:
                            answer = crop(client, url, photo, user)
                            width = answer["width"]
                            mine += on_side(answer["personal"]["crops"][0]["box"], width, side)
                            prior += on_side(answer["personal"]["generic"][0]["box"], width, side)
                            model += on_side(answer["results"][0]["crops"][0]["box"], width, side)
                        total = len(unseen)
                        result = f"{seconds:.1f}" if state == "done" else f"failed: {state}"
                        print(f"| {name} | {count} | {result} | {mine}/{total} | {prior}/{total} | {model}/{total} |")
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
