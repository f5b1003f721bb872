"""The generated PIC benchmark end to end: data, pre-training, prior, fine-tuning, a table per taste group.

  python benchmarks/bench_pic.py                          # the run reported in BENCHMARKS.md
  python benchmarks/bench_pic.py --quick                  # the small run of tests/test_pic.py
  python benchmarks/bench_pic.py --out experiments/bench_pic --overwrite

Users of four taste groups (untils/pic_synthetic.py) rate the GAIC candidates of real photos of
people and generated scenes. pretrain_PIC.py (random-init mobilenetv2: no ImageNet weights offline,
objective = the training users' average scores), prior_PIC.py and finetune_PIC.py run with
their defaults except the sizes below; then, per group of test users and number of fine-tuning
images, the mean SRCC and Acc1/5 (x100) of the generic model, the prior with the mean embedding,
the prior (few-shot embedding) and the fine-tuned model, next to how far the group's taste is
from the training users' average (1 - SRCC of noise-free scores, on the test images).
Writes <out>/pic_benchmark.md and .csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import config_PIC  # noqa: E402
import finetune_PIC  # noqa: E402
import prior_PIC  # noqa: E402
import pretrain_PIC  # noqa: E402
from pic_dataset import split_user_images  # noqa: E402
from untils.pic_synthetic import TASTE_GROUPS, build_pic_benchmark, departure_from_average, read_tastes  # noqa: E402

MODEL_TITLES = {"generic": "generic", "prior-mean": "prior (mean user)", "prior": "prior", "finetuned": "fine-tuned"}


@dataclass(frozen=True)
class BenchmarkSettings:
    train_users_per_group: int = 6
    test_users_per_group: int = 3
    train_images: int = 96
    test_images: int = 48
    images_per_train_user: int = 32
    long_side: int = 256
    image_size: int = 128
    pretrain_epochs: int = 24
    prior_epochs: int = 60
    shots: tuple[int, ...] = (5, 10, 20)
    seed: int = 0
    extra_options: tuple[str, ...] = field(default_factory=tuple)


QUICK = BenchmarkSettings(train_users_per_group=3, test_users_per_group=2, train_images=24, test_images=24,
                          images_per_train_user=16, long_side=160, image_size=128, pretrain_epochs=4,
                          prior_epochs=40, shots=(5,))


def run_benchmark(out_dir: str, settings: BenchmarkSettings = BenchmarkSettings(), progress: bool = False,
                  overwrite: bool = False) -> dict:
    """Run the whole pipeline under ``out_dir``; return the rows per number of shots, the group
    table and the departure of each test user."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out_dir)
    data_root = os.path.join(out_dir, "data")
    os.makedirs(data_root)
    start = time.time()
    benchmark = build_pic_benchmark(data_root, settings.train_users_per_group, settings.test_users_per_group,
                                    settings.train_images, settings.test_images, settings.images_per_train_user,
                                    settings.long_side, settings.seed)
    common = ["--data-root", data_root, "--exp_root", os.path.join(out_dir, "experiments"), "--device", "cpu",
              "--num_workers", "0", "--seed", str(settings.seed), *settings.extra_options]
    quiet = [] if progress else ["--no-progress"]
    size = str(settings.image_size)
    trainer = pretrain_PIC.main(common + quiet + [
        "--variant", "embedding", "--exp_name", "pretrain", "--pretrained", "false", "--image_size", size, size, "--keep_aspect_ratio", "false",
        "--images_per_step", "8", "--batch_size", "8", "--max_epoch", str(settings.pretrain_epochs),
        "--warmup_epochs", "1", "--view_per_image", "32", "--lr", "1e-3"])
    pretrained = os.path.join(trainer.checkpoint_dir, "best-srcc.pth")
    prior = prior_PIC.main(common + quiet + ["--checkpoint", pretrained, "--exp_name", "prior",
                                             "--prior_epochs", str(settings.prior_epochs)])
    rows = {}
    for shots in settings.shots:
        result = finetune_PIC.main(common + quiet + ["--checkpoint", prior["checkpoint"], "--exp_name",
                                                     f"finetune-{shots}", "--finetune_images", str(shots)])
        rows[shots] = result["rows"]
    tastes = read_tastes(benchmark["path"])
    departure = test_user_departure(benchmark, tastes, settings)
    table = group_table(rows, benchmark["groups"], departure)
    return {"rows": rows, "table": table, "departure": departure, "groups": benchmark["groups"],
            "seconds": time.time() - start, "settings": asdict(settings)}


def test_user_departure(benchmark: dict, tastes: dict, settings: BenchmarkSettings) -> dict[str, float]:
    """Each test user's departure from the training users' average taste, on the user's test images."""
    with open(os.path.join(benchmark["path"], "human_bboxes.json")) as stream:
        human_boxes = json.load(stream)
    departure = {}
    for user in benchmark["test"]:
        with open(os.path.join(benchmark["path"], "annotations", f"{user}.json")) as stream:
            names = list(json.load(stream))
        test = split_user_images(user, names, min(settings.shots), 1, config_PIC.Config.user_test_fraction,
                                 settings.seed).test
        images = {}
        for name in test:
            with Image.open(os.path.join(benchmark["path"], "images", name)) as image:
                images[name] = (*image.size, human_boxes.get(name))
        departure.update(departure_from_average(tastes, benchmark["train"], [user], images))
    return departure


def group_table(rows: dict[int, list[dict]], groups: dict[str, str], departure: dict[str, float]) -> list[dict]:
    """Mean SRCC and Acc1/5 per taste group (and over all test users) for each number of shots."""
    table = []
    for shots, shot_rows in rows.items():
        users = sorted({row["user"] for row in shot_rows})
        for group in [g for g in TASTE_GROUPS if any(groups[u] == g for u in users)] + ["all"]:
            members = [u for u in users if group == "all" or groups[u] == group]
            entry = {"group": group, "users": len(members), "shots": shots,
                     "departure": round(100 * float(np.mean([departure[u] for u in members])), 1)}
            for metric in ("srcc", "acc1_5"):
                for model in MODEL_TITLES:
                    values = [row[metric] for row in shot_rows if row["user"] in members and row["model"] == model]
                    entry[f"{model} {metric}"] = round(float(np.mean(values)), 1)
            table.append(entry)
    return table


def format_table(table: Sequence[dict]) -> str:
    header = (["group", "users", "N", "departure"] + [f"{MODEL_TITLES[m]} SRCC" for m in MODEL_TITLES]
              + [f"{MODEL_TITLES[m]} Acc1/5" for m in MODEL_TITLES])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for entry in table:
        cells = [entry["group"], str(entry["users"]), str(entry["shots"]), f"{entry['departure']:.1f}"]
        cells += [f"{entry[f'{model} {metric}']:.1f}" for metric in ("srcc", "acc1_5") for model in MODEL_TITLES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="experiments/bench_pic", help="working folder (data, experiments, table)")
    parser.add_argument("--quick", action="store_true", help="the small settings of tests/test_pic.py")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else BenchmarkSettings()
    result = run_benchmark(args.out, settings, args.progress, args.overwrite)
    table = format_table(result["table"])
    with open(os.path.join(args.out, "pic_benchmark.md"), "w") as stream:
        stream.write(table + "\n")
    with open(os.path.join(args.out, "pic_benchmark.csv"), "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(result["table"][0]))
        writer.writeheader()
        writer.writerows(result["table"])
    print(table)
    print(f"settings: {result['settings']}")
    print(f"total {result['seconds'] / 60:.1f} min; written to {args.out}/pic_benchmark.md and .csv")
    return result


if __name__ == "__main__":
    main()
