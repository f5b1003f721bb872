"""Photos per second of crop.py on a folder of generated photos.

  python benchmarks/bench_crop.py                                   # mobilenetv2 on 100, vgg16 on 20 photos
  python benchmarks/bench_crop.py --backbones mobilenetv2 --photos 30 --num-workers 0 --photos-per-batch 1
  python benchmarks/bench_crop.py --breakdown   # model time only: backbone vs per-crop content features
  python benchmarks/bench_crop.py --backbones mobilenetv2 --photos 40 --compare-ratios any 1:1 16:9 9:16
  python benchmarks/bench_crop.py --photos 12 --vgg16-photos 6 --compare-ratios any 1:1 16:9 9:16 \
      --ratio-candidates dense fast --repeats 3
  python benchmarks/bench_crop.py --device cuda --compare-ratios any 1:1 16:9 9:16 --warmup 1 --json crop.json

Each run is the whole command line tool, in process: ``crop.main([folder, --allow-untrained, ...])``
with a random-weight human-centric model (timing does not depend on the weights), free ratio
(GAIC grid), top-3 crops and the JSON written per photo, no person. The photos are generated
1024x768 JPEGs (smooth colour fields, shapes and noise; seeded), so the timing includes JPEG
decoding, LANCZOS resizing, scoring and JPEG encoding of the crops. The model is built once
more outside the timed run to report its construction time, which the end-to-end time includes.

``--compare-ratios R1 R2 ...`` times the same folder per backbone with ``--aspect-ratio R1`` alone,
then with all the ratios in one run (one pass over each photo), once per ``--ratio-candidates`` grid
(``crop.py --ratio-candidates``), and prints the cost ratio. ``--repeats N`` runs every condition N
times, interleaved (one of each, then again), and keeps each one's median: on a shared machine the
load then falls on every condition alike.

``--breakdown`` times two parts of the model instead, on one batch of ``--photos-per-batch`` 1024x768
photos (resized to 352x256, 90 GAIC candidates each), best of 3: the backbone, and the
content feature every candidate gets from its 64x64 mask on the heat map (the factorised path).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from photo_folder import make_folder  # noqa: E402

import crop  # noqa: E402
import rod_align  # noqa: E402
import roi_align  # noqa: E402
from config_GAICD import BACKBONES  # noqa: E402
from untils.atomic import write_json_atomic  # noqa: E402
from untils.boxes import crop_mask_factors, resized_size  # noqa: E402
from untils.candidates import gaic_grid_candidates, parse_aspect_ratio  # noqa: E402
from untils.cli import add_option_aliases  # noqa: E402
from untils.runtime import default_workers  # noqa: E402


def align_backends() -> str:
    def backend(kernels) -> str:
        return "compiled" if kernels.available else "pure-PyTorch fallback"

    return f"roi_align {backend(roi_align.KERNELS)}, rod_align {backend(rod_align.KERNELS)}"


def time_backbone(
    backbone: str,
    folder: Path,
    out_dir: Path,
    args: argparse.Namespace,
    ratios: tuple[str, ...] = ("any",),
    ratio_candidates: str = "dense",
) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        crop.Cropper(None, args.device, allow_untrained=True, backbone=backbone)
        build_s = time.perf_counter() - start
    photos = len(list(folder.iterdir()))
    command = [
        str(folder),
        "--allow-untrained",
        "--untrained-backbone",
        backbone,
        "--out",
        str(out_dir),
        "--top-k",
        "3",
        "--photos-per-batch",
        str(args.photos_per_batch),
        "--num-workers",
        str(args.num_workers),
        "--device",
        args.device,
        "--overwrite",
        "--ratio-candidates",
        ratio_candidates,
        "--aspect-ratio",
        *ratios,
    ] + (["--detect-human"] if args.detect_human else [])
    start = time.perf_counter()
    code = crop.main(command)
    total_s = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"crop.main exited with {code} for {backbone}")
    return {
        "backbone": backbone,
        "ratios": " ".join(ratios),
        "ratio_candidates": ratio_candidates,
        "photos": photos,
        "total_s": total_s,
        "build_s": build_s,
        "photos_per_s": photos / total_s,
    }


def compared_runs(backbone: str, folder: Path, tmp: Path, args: argparse.Namespace) -> list[dict]:
    """The timed conditions of one backbone, each the median of ``args.repeats`` interleaved runs; with
    ``--compare-ratios``, the first ratio alone and every ratio at once per candidate grid, the latter
    with ``versus_one`` (its time over the first ratio's alone on the same grid)."""
    conditions = [(("any",), "dense")]
    if args.compare_ratios:
        alone, every = (args.compare_ratios[0],), tuple(args.compare_ratios)
        fixed_first = parse_aspect_ratio(alone[0]) is not None  # a free first ratio ignores the grid
        conditions = [(alone, args.ratio_candidates[0])] if not fixed_first else []
        for mode in args.ratio_candidates:
            conditions += ([(alone, mode)] if fixed_first else []) + [(every, mode)]
    runs: dict[tuple, list[dict]] = {condition: [] for condition in conditions}
    for _ in range(args.warmup):
        for index, (ratios, mode) in enumerate(conditions):
            time_backbone(backbone, folder, tmp / f"warmup-{backbone}-{index}", args, ratios, mode)
    for _ in range(args.repeats):
        for index, (ratios, mode) in enumerate(conditions):
            out_dir = tmp / f"out-{backbone}-{index}"
            runs[(ratios, mode)].append(time_backbone(backbone, folder, out_dir, args, ratios, mode))
    rows = []
    for timed in runs.values():
        row = dict(timed[0], total_s=float(np.median([run["total_s"] for run in timed])), repeats=len(timed))
        row["photos_per_s"] = row["photos"] / row["total_s"]
        rows.append(row)
    by_condition = dict(zip(conditions, rows, strict=True))
    for (ratios, mode), row in by_condition.items():
        if len(ratios) > 1:
            alone_row = by_condition.get(((ratios[0],), mode)) or by_condition[((ratios[0],), args.ratio_candidates[0])]
            row["versus_one"] = row["total_s"] / alone_row["total_s"]
    return rows


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def model_breakdown(backbone: str, photos: int, width: int, height: int, device: str) -> dict:
    """Seconds per photo of the backbone and of the per-crop content features, best of 3."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cropper = crop.Cropper(None, device, allow_untrained=True, backbone=backbone)
    model = cropper.model
    input_w, input_h = resized_size(width, height, cropper.cfg.image_size, cropper.cfg.keep_aspect_ratio)
    boxes = gaic_grid_candidates(input_w, input_h)[None].repeat(photos, 1, 1).to(cropper.device)
    image = torch.randn(photos, 3, input_h, input_w, device=cropper.device)
    with torch.inference_mode():
        heat_map = model.content_preserve.predict_heat_map(model.reduced_features(image))
        rows, columns = (factor.reshape(-1, factor.shape[-1]) for factor in crop_mask_factors(boxes, input_w, input_h))
        image_index = torch.arange(photos, device=cropper.device).repeat_interleave(boxes.shape[1])
        backbone_s = best_of(3, lambda: model.backbone(image))
        content_s = best_of(3, lambda: model.content_preserve.crop_features(heat_map, rows, columns, image_index))
    return {
        "backbone": backbone,
        "crops": boxes.shape[1],
        "backbone_s": backbone_s / photos,
        "content_s": content_s / photos,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["mobilenetv2", "vgg16"], choices=BACKBONES)
    parser.add_argument("--photos", type=int, default=100, help="photos per backbone")
    parser.add_argument("--vgg16-photos", type=int, default=20, help="photos for vgg16 (slower; fewer by default)")
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the generated photos")
    parser.add_argument("--photos-per-batch", type=int, default=4, help="photos scored together")
    parser.add_argument("--num-workers", type=int, default=default_workers(limit=2))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detect-human", action="store_true", help="also run the offline person detector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-ratios",
        nargs="+",
        metavar="RATIO",
        help="time the first ratio alone, then all of them in one run (see above)",
    )
    parser.add_argument(
        "--ratio-candidates",
        nargs="+",
        default=["dense"],
        choices=("dense", "fast"),
        help="with --compare-ratios: the candidate grids of fixed ratios to time (default dense)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each condition, interleaved; median kept")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed runs of each condition first (a GPU's first calls load kernels)"
    )
    parser.add_argument("--json", help="also write every timed run to this JSON file")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="time the backbone and the per-crop content features instead (see above)",
    )
    add_option_aliases(parser, renamed={"--batch-size": "--photos-per-batch", "--workers": "--num-workers"})
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected at least 1")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup}: expected 0 or more")
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.breakdown:
        print(
            f"{date.today()} | {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), device {args.device} | load average {os.getloadavg()[0]:.1f}"
        )
        print(f"seconds per photo, batch of {args.photos_per_batch}, best of 3\n")
        print("| backbone | crops per photo | backbone (s/photo) | per-crop content features (s/photo) |")
        print("|---|---|---|---|")
        for backbone in args.backbones:
            row = model_breakdown(backbone, args.photos_per_batch, width, height, args.device)
            print(f"| {backbone} | {row['crops']} | {row['backbone_s']:.2f} | {row['content_s']:.2f} |")
        return

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-crop-") as tmp:
        for backbone in args.backbones:
            count = args.vgg16_photos if backbone == "vgg16" else args.photos
            folder = make_folder(Path(tmp) / f"photos{count}", count, width, height, args.seed)
            rows += compared_runs(backbone, folder, Path(tmp), args)
    environment = (
        f"{date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device} | "
        f"{align_backends()} | load average before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}"
    )
    print(f"\n{environment}")
    print(
        f"{width}x{height} JPEGs, top-3 crops per ratio + JSON written, {args.photos_per_batch} photos per batch, "
        f"{args.num_workers} DataLoader workers, person detection {'on' if args.detect_human else 'off'}, "
        "random-weight models\n"
    )
    print(
        f"| backbone | aspect ratios | ratio candidates | photos | total (s), median of {args.repeats} | photos/s | "
        "s/photo | model construction (s) | time / one ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        versus = f"{row['versus_one']:.2f}x" if "versus_one" in row else ""
        print(
            f"| {row['backbone']} | {row['ratios']} | {row['ratio_candidates']} | {row['photos']} | "
            f"{row['total_s']:.1f} | "
            f"{row['photos_per_s']:.2f} | {row['total_s'] / row['photos']:.2f} | {row['build_s']:.1f} | {versus} |"
        )
    if args.json:
        write_json_atomic(args.json, {"environment": environment, "runs": rows}, indent=1)


if __name__ == "__main__":
    main()
