"""Time personalized cropping's loop on the CPU: the demo prior's training, ranking a photo's
candidates, and personalizing from a person's ratings.

  python benchmarks/bench_personalize.py                       # the run reported in BENCHMARKS.md
  python benchmarks/bench_personalize.py --photos 20 --threads 1

1. The demo prior (untils/pic_demo.py): the commands ``app.py --demo`` runs when it is absent
   (``pretrain_PIC.py --demo``, ``prior_PIC.py --demo``), each timed, from an empty folder.
2. Generated photos with people (untils/demo_data.py); the prior ranks each photo's candidates
   (``PICRanker.rank``, timed per photo).
3. A synthetic person rates ``--crops-per-photo`` of the candidates of ``--photos`` photos (spread
   over the prior's ranking) by a hand-written rule (crops right of centre are better), and
   ``personalize_from_ratings`` fine-tunes the prior to them, ``--repeats`` times (timed; the
   median and the slowest are reported).

torch runs on ``--threads`` threads (2: the issue's 2-core budget). Prints a summary and writes it
to <out>/bench_personalize.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pic_model import load_pic_ranker, personalize_from_ratings  # noqa: E402
from untils.atomic import json_text, write_json_atomic  # noqa: E402
from untils.demo_data import build_demo_dataset  # noqa: E402
from untils.pic_demo import demo_prior_checkpoint, demo_prior_commands  # noqa: E402
from untils.pic_format import RATINGS_CSV_COLUMNS  # noqa: E402


def train_demo_prior(demo_dir: str, threads: int) -> list[float]:
    """Run the demo prior's commands from an empty ``demo_dir``; seconds of each."""
    shutil.rmtree(demo_dir, ignore_errors=True)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    seconds = []
    for command in demo_prior_commands(demo_dir, sys.executable):
        start = time.perf_counter()
        subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="experiments/bench_personalize", help="working folder (replaced)")
    parser.add_argument("--photos", type=int, default=10, help="rated photos")
    parser.add_argument("--crops-per-photo", type=int, default=12, help="rated crops of each photo")
    parser.add_argument("--repeats", type=int, default=3, help="personalizations timed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    demo_dir = os.path.join(args.out, "demo")
    prior_seconds = train_demo_prior(demo_dir, args.threads)
    prior = demo_prior_checkpoint(demo_dir)

    demo = build_demo_dataset(
        os.path.join(args.out, "photos"), num_train=args.photos, num_test=2, seed=11, long_side=640
    )
    with open(os.path.join(demo["path"], "human_bboxes.json")) as stream:
        human_boxes = {name: tuple(box) for name, box in json.load(stream).items()}
    photo_dir = os.path.join(demo["path"], "images", "train")
    ranker = load_pic_ranker(prior)
    rows, rank_seconds = [], []
    for name in demo["train"]:
        with Image.open(os.path.join(photo_dir, name)) as image:
            start = time.perf_counter()
            ranked = ranker.rank(image, human_boxes.get(name))
            rank_seconds.append(time.perf_counter() - start)
            width = image.size[0]
        for box, _ in ranked[:: max(1, len(ranked) // args.crops_per_photo)][: args.crops_per_photo]:
            rows.append(["bench", name, *box, round(1 + 4 * (box[0] + box[2]) / 2 / width, 2)])
    ratings_csv = os.path.join(args.out, "ratings.csv")
    with open(ratings_csv, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(RATINGS_CSV_COLUMNS)
        writer.writerows(rows)
    seconds, summary = [], {}
    for repeat in range(args.repeats):
        start = time.perf_counter()
        summary = personalize_from_ratings(
            prior,
            "bench",
            ratings_csv,
            photo_dir,
            os.path.join(args.out, f"personal-{repeat}.pth"),
            human_boxes=human_boxes,
        )
        seconds.append(time.perf_counter() - start)
    result = {
        "demo_prior_seconds": {"pretrain_PIC.py --demo": prior_seconds[0], "prior_PIC.py --demo": prior_seconds[1]},
        "demo_prior_total_seconds": sum(prior_seconds),
        "rank_seconds_median": statistics.median(rank_seconds),
        "photo_size": list(Image.open(os.path.join(photo_dir, demo["train"][0])).size),
        "photos": summary["photos"],
        "ratings": summary["ratings"],
        "personalize_seconds": seconds,
        "personalize_seconds_median": statistics.median(seconds),
        "personalize_seconds_max": max(seconds),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    write_json_atomic(os.path.join(args.out, "bench_personalize.json"), result, indent=1)
    print(json_text(result, "bench_personalize", indent=1))
    return result


if __name__ == "__main__":
    main()
