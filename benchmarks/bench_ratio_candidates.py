"""How much the fast fixed-ratio candidate grid loses against the dense one (crop.py --ratio-candidates).

  python train_on_GAICD.py --demo --demo-dir demo_runs     # the demo model and its photos, about a minute
  python benchmarks/bench_ratio_candidates.py --demo-dir demo_runs
  python benchmarks/bench_ratio_candidates.py --demo-dir demo_runs --random-backbones vgg16 --ratios 1:1 4:5

Every photo of the demo dataset (generated composites of a person on a background, six shapes from 4:3
to 2:3, with their person boxes) is ranked at each fixed ratio twice by the same model, among the dense
grid's crops (6 scales x 5x5 positions) and among the fast grid's (3 scales x 4x4). The models: the
demo model (``--demo-dir``), and human-centric models with random weights on ``--random-backbones``
(seeded; a scorer with no learned taste, whose rankings are the least smooth). Per model and ratio:

* top-1 IoU: the IoU of the fast grid's best crop with the dense grid's (1: the same crop);
* regret: how far the fast best crop's score falls below the dense best's, as a share of the spread
  of the dense candidates' scores on that photo (max - min; 0 when the fast grid finds a crop as good
  or better, which it may: its crops are not all dense ones);

the mean, the median and the worst over the photos. The scores come from one model for both grids, so
this measures what the smaller grid misses, not how good the model is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import crop  # noqa: E402
from config_GAICD import BACKBONES  # noqa: E402
from untils.boxes import box_iou  # noqa: E402
from untils.cropper import Cropper, CropResult, PhotoFailure  # noqa: E402


def demo_photos(demo_dir: Path) -> tuple[list[str], list[list[float] | None]]:
    """The demo dataset's photos (train and test, sorted) and their person boxes (None: no person)."""
    root = demo_dir / "data" / "GAICD"
    boxes_file = root / "human_bboxes.json"
    if not boxes_file.is_file():
        raise SystemExit(
            f"error: no demo dataset in {demo_dir} ({boxes_file} missing): "
            f"run python train_on_GAICD.py --demo --demo-dir {demo_dir}"
        )
    people = json.loads(boxes_file.read_text())
    photos = sorted((root / "images").glob("*/*.jpg"))
    return [str(photo) for photo in photos], [people.get(photo.name) for photo in photos]


def ranked(cropper: Cropper, photos: list[str], boxes: list, ratios: list[str]) -> dict[int, CropResult]:
    results: dict[int, CropResult] = {}
    for result in cropper.rank_many(photos, boxes, ratios):
        if isinstance(result, PhotoFailure):
            raise RuntimeError(f"{result.name}: {result.message}")
        results[result.index] = result
    return results


def compare_grids(model: torch.nn.Module, photos: list[str], boxes: list, ratios: list[str]) -> dict[str, dict]:
    """Per ratio: the top-1 IoUs and score regrets of the fast grid against the dense one, one per photo."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn; said in the table instead
        dense = ranked(Cropper(model, ratio_candidates="dense"), photos, boxes, ratios)
        fast = ranked(Cropper(model, ratio_candidates="fast"), photos, boxes, ratios)
    measures: dict[str, dict] = {ratio: {"iou": [], "regret": [], "dense": [], "fast": []} for ratio in ratios}
    for index, dense_result in dense.items():
        for dense_ratio, fast_ratio in zip(dense_result.results, fast[index].results, strict=True):
            dense_scores = np.array(dense_ratio.scores)
            spread = float(dense_scores.max() - dense_scores.min())
            shortfall = max(0.0, dense_ratio.scores[0] - fast_ratio.scores[0])
            entry = measures[dense_ratio.aspect_ratio]
            entry["iou"].append(
                float(box_iou(torch.tensor([dense_ratio.boxes[0]]), torch.tensor([fast_ratio.boxes[0]])))
            )
            entry["regret"].append(shortfall / spread if spread > 0 else 0.0)
            entry["dense"].append(len(dense_ratio.boxes))
            entry["fast"].append(len(fast_ratio.boxes))
    return measures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default="demo_runs", help="train_on_GAICD.py --demo's folder (default demo_runs)")
    parser.add_argument("--ratios", nargs="+", default=["1:1", "16:9", "9:16"], help="fixed ratios compared")
    parser.add_argument(
        "--random-backbones",
        nargs="*",
        default=["vgg16", "mobilenetv2"],
        choices=BACKBONES,
        help="also compare on random-weight models of these backbones (none: only the demo model)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    photos, boxes = demo_photos(Path(args.demo_dir))
    checkpoint = Path(args.demo_dir) / "experiments" / "demo" / "checkpoints" / "best-srcc.pth"
    models = [(f"demo model ({checkpoint.name})", str(checkpoint), "vgg16")] + [
        (f"random weights, {backbone}", None, backbone) for backbone in args.random_backbones
    ]
    print(
        f"{date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) | {len(photos)} demo photos "
        f"({args.demo_dir}), person boxes given\n"
    )
    print(
        "| model | ratio | mean candidates dense / fast | top-1 IoU mean / median / min | regret mean / median / max |"
    )
    print("|---|---|---|---|---|")
    for label, path, backbone in models:
        torch.manual_seed(args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = crop.Cropper(path, "cpu", allow_untrained=path is None, backbone=backbone).model
        for ratio, entry in compare_grids(model, photos, boxes, args.ratios).items():
            iou, regret = np.array(entry["iou"]), np.array(entry["regret"])
            print(
                f"| {label} | {ratio} | {np.mean(entry['dense']):.0f} / {np.mean(entry['fast']):.0f} | "
                f"{iou.mean():.2f} / {np.median(iou):.2f} / {iou.min():.2f} | "
                f"{regret.mean():.3f} / {np.median(regret):.3f} / {regret.max():.3f} |"
            )


if __name__ == "__main__":
    main()
