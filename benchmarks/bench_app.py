"""The web server (app.py) under load, against crop.py on the same photos and model.

  python benchmarks/bench_app.py                       # 48 photos, 8 clients, mobilenetv2
  python benchmarks/bench_app.py --photos 96 --clients 8 --latency-runs 15
  python benchmarks/bench_app.py --device cuda --json app.json   # the model on a GPU (gpu_check.py)

One random-weight human-centric mobilenetv2 checkpoint (timing does not depend on the weights) is
written once; crop.py (``crop.main`` in this process: free ratio, top-3 crops and JSON written, its
default batch and DataLoader workers) crops a folder of generated 1024x768 JPEGs (photo_folder.py's,
as bench_crop.py's); then ``python app.py`` serves the same checkpoint (no person detector) and
* latency: one client posts one photo at a time (free ratio, top 3), ``--latency-runs`` times;
  the median and the slowest are reported;
* throughput: ``--clients`` clients post the whole folder (each photo once) as fast as the server
  answers; photos per second from the first request to the last answer.
The server's start is not timed; crop.main builds its model inside its timed run (about 0.1 s for
mobilenetv2).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app_server import start_server  # noqa: E402
from photo_folder import make_folder  # noqa: E402

import crop  # noqa: E402
from config_GAICD import Config  # noqa: E402
from cropping_model import build_crop_model  # noqa: E402
from untils.atomic import write_json_atomic  # noqa: E402
from untils.cli import add_option_aliases  # noqa: E402


def tiny_checkpoint(path: Path, backbone: str) -> Path:
    cfg = Config(backbone=backbone, pretrained=False)
    torch.manual_seed(0)
    model = build_crop_model(cfg, "HCIC")
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg), "model_type": "HCIC"}, path)
    return path


def post(client: httpx.Client, url: str, photo: Path) -> float:
    start = time.perf_counter()
    response = client.post(
        f"{url}/api/crop",
        files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"aspect_ratio": "free", "top_k": "3"},
        timeout=600,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{photo.name}: {response.status_code} {response.text}")
    return time.perf_counter() - start


def throughput(url: str, photos: list[Path], clients: int) -> float:
    """Photos per second with ``clients`` clients posting every photo once."""
    todo: queue.Queue[Path] = queue.Queue()
    for photo in photos:
        todo.put(photo)
    errors: list[BaseException] = []

    def client_loop() -> None:
        with httpx.Client() as client:
            while True:
                try:
                    photo = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    post(client, url, photo)
                except BaseException as error:  # reported after the run
                    errors.append(error)
                    return

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    return len(photos) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=48, help="photos in the folder (default 48)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--latency-runs", type=int, default=10, help="lone requests timed (default 10)")
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the generated photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where crop.py and app.py run the model (default cpu)")
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = add_option_aliases(parser).parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        folder = make_folder(Path(tmp) / "photos", args.photos, width, height, args.seed)
        checkpoint = tiny_checkpoint(Path(tmp) / "model.pth", args.backbone)
        start = time.perf_counter()
        code = crop.main(
            [
                str(folder),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(Path(tmp) / "out"),
                "--top-k",
                "3",
                "--device",
                args.device,
            ]
        )
        crop_rate = args.photos / (time.perf_counter() - start)
        if code != 0:
            raise RuntimeError(f"crop.main exited with {code}")
        process, url = start_server(
            ["--checkpoint", str(checkpoint), "--device", args.device], Path(tmp) / "data", Path(tmp) / "server.log"
        )
        try:
            photos = sorted(folder.iterdir())
            with httpx.Client() as client:
                post(client, url, photos[0])  # warm-up: first allocations
                latencies = [post(client, url, photos[0]) for _ in range(args.latency_runs)]
            server_rate = throughput(url, photos, args.clients)
        finally:
            process.terminate()
            process.wait(timeout=30)
    results = {
        "environment": (
            f"{date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"device {args.device}, torch {torch.__version__} | load average before: {load_before:.1f}, "
            f"after: {os.getloadavg()[0]:.1f}"
        ),
        "setting": (
            f"{args.photos} generated {width}x{height} JPEGs, random-weight HCIC {args.backbone}, free ratio, top 3, "
            "no person detection"
        ),
        "crop_photos_per_s": crop_rate,
        "clients": args.clients,
        "server_photos_per_s": server_rate,
        "latency_median_s": statistics.median(latencies),
        "latency_max_s": max(latencies),
        "latency_runs": len(latencies),
    }
    print(f"\n{results['environment']}")
    print(f"{results['setting']}\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| crop.py folder throughput (photos/s) | {crop_rate:.2f} |")
    print(f"| app.py, {args.clients} concurrent clients (photos/s) | {server_rate:.2f} |")
    print(f"| app.py / crop.py throughput | {server_rate / crop_rate:.0%} |")
    print(f"| app.py, one photo alone: median latency (s) | {statistics.median(latencies):.3f} |")
    print(f"| app.py, one photo alone: slowest of {len(latencies)} (s) | {max(latencies):.3f} |")
    if args.json:
        write_json_atomic(args.json, results, indent=1)


if __name__ == "__main__":
    main()
