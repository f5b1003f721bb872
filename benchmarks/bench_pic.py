"""The generated PIC benchmark end to end, both variants on the same users, over several seeds.

  python benchmarks/bench_pic.py                          # the run reported in BENCHMARKS.md
  python benchmarks/bench_pic.py --quick                  # the small run of tests/test_pic.py
  python benchmarks/bench_pic.py --out experiments/bench_pic --overwrite
  python benchmarks/bench_pic.py --seeds 0 1 2                  # fewer seeds

For each seed (it seeds the generated data and every stage's initialisation and sampling), users
of the taste groups of ``BenchmarkSettings.groups`` (untils/pic_synthetic.py: geometry tastes the
embedding variant's crop geometry describes, and content tastes no input feature encodes) rate
the 24 fixed views (``untils.pic_format.fixed_views``, one order for every image) of real photos
of people and generated scenes, which is what the official variant's per-position offsets need.
The same ratings are written in our layout (``PIC/``, the embedding variant) and the release's
(``PIC_release/``, ``convert_PIC_data.write_release_layout``, the official variant): the same training
users, and for each test user the same N fine-tuning images and the same held-out test images.
Then, with random-init mobilenetv2 backbones (no ImageNet weights offline):

  official   pretrain_PIC.py --variant official, prior_PIC.py, finetune_PIC.py per N
  embedding  pretrain_PIC.py --variant embedding, prior_PIC.py, finetune_PIC.py per N

with the scripts' defaults except the sizes in ``BenchmarkSettings``. Reported per taste group
and N: the mean over seeds (± the std over seeds) of the mean over the group's test users of
SRCC and Acc1/5 (x100) of each variant's generic model (its objective branch), its prior and its
fine-tuned model, next to how far the group's taste is from the training users' average
(departure: 1 - SRCC of noise-free scores on the test images). Writes <out>/pic_benchmark.md and
.csv; each seed's data and experiments stay in <out>/seed-<k>/.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import config_PIC  # noqa: E402
import finetune_PIC  # noqa: E402
import pretrain_PIC  # noqa: E402
import prior_PIC  # noqa: E402
from convert_PIC_data import write_release_layout  # noqa: E402
from pic_dataset import load_pic_data, split_user_images  # noqa: E402
from untils.pic_synthetic import (  # noqa: E402
    RatedImageInfo,
    build_pic_benchmark,
    departure_from_average,
    read_image_contents,
    read_tastes,
)

VARIANTS = ("official", "embedding")
# (variant, model of finetune_PIC's rows) -> column title
MODEL_TITLES = {
    ("official", "generic"): "official generic",
    ("official", "prior"): "official prior",
    ("official", "finetuned"): "official fine-tuned",
    ("embedding", "generic"): "embedding generic",
    ("embedding", "prior"): "embedding prior",
    ("embedding", "finetuned"): "embedding fine-tuned",
}
METRICS = {"srcc": "SRCC", "acc1_5": "Acc1/5"}


@dataclass(frozen=True)
class BenchmarkSettings:
    groups: tuple[str, ...] = ("thirds", "tight", "bright", "colourful", "second_object")
    train_users_per_group: int = 2
    test_users_per_group: int = 1
    train_images: int = 32
    test_images: int = 44  # N = 20 needs 42: half are held out for the report, 20 + 1 left
    images_per_train_user: int = 16
    long_side: int = 256  # the official objective branch resizes the shorter side to 256 anyway
    image_size: int = 128  # the embedding variant's input
    pretrain_epochs: int = 16
    prior_epochs: int = 40
    official_pretrain_epochs: int = 10
    official_prior_epochs: int = 3
    official_finetune_epochs: int = 3
    shots: tuple[int, ...] = (5, 10, 20)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    variants: tuple[str, ...] = VARIANTS


QUICK = BenchmarkSettings(
    groups=("thirds", "tight", "bright", "second_object"),
    train_users_per_group=2,
    test_users_per_group=1,
    train_images=16,
    test_images=24,
    images_per_train_user=10,
    long_side=160,
    image_size=128,
    pretrain_epochs=4,
    prior_epochs=40,
    official_pretrain_epochs=1,
    official_prior_epochs=1,
    official_finetune_epochs=1,
    shots=(5,),
    seeds=(0,),
)


def run_official(common: Sequence[str], settings: BenchmarkSettings) -> dict[int, list[dict]]:
    """The official variant's three stages on ``<data_root>/PIC_release``; rows per N."""
    pretrained = pretrain_PIC.main(
        [
            *common,
            "--variant",
            "official",
            "--exp_name",
            "official-pretrain",
            "--objective_set",
            "PIC",
            "--pretrained",
            "false",
            "--max_epoch",
            str(settings.official_pretrain_epochs),
            "--lr",
            "1e-3",
        ]
    )
    prior = prior_PIC.main(
        [
            *common,
            "--no-progress",
            "--checkpoint",
            pretrained["checkpoint"],
            "--exp_name",
            "official-prior",
            "--official_prior_epochs",
            str(settings.official_prior_epochs),
        ]
    )
    return {
        shots: finetune_PIC.main(
            [
                *common,
                "--no-progress",
                "--no-save-users",
                "--checkpoint",
                prior["checkpoint"],
                "--exp_name",
                f"official-finetune-{shots}",
                "--finetune_images",
                str(shots),
                "--official_finetune_epochs",
                str(settings.official_finetune_epochs),
            ]
        )["rows"]
        for shots in settings.shots
    }


def run_embedding(common: Sequence[str], settings: BenchmarkSettings, progress: bool) -> dict[int, list[dict]]:
    """The embedding variant's three stages on ``<data_root>/PIC``; rows per N."""
    quiet = [] if progress else ["--no-progress"]
    size = str(settings.image_size)
    trainer = pretrain_PIC.main(
        [
            *common,
            *quiet,
            "--variant",
            "embedding",
            "--exp_name",
            "pretrain",
            "--pretrained",
            "false",
            "--image_size",
            size,
            size,
            "--keep_aspect_ratio",
            "false",
            "--images_per_step",
            "8",
            "--batch_size",
            "8",
            "--max_epoch",
            str(settings.pretrain_epochs),
            "--warmup_epochs",
            "1",
            "--view_per_image",
            "32",
            "--lr",
            "1e-3",
        ]
    )
    prior = prior_PIC.main(
        [
            *common,
            *quiet,
            "--checkpoint",
            os.path.join(trainer.checkpoint_dir, "best-srcc.pth"),
            "--exp_name",
            "prior",
            "--prior_epochs",
            str(settings.prior_epochs),
        ]
    )
    return {
        shots: finetune_PIC.main(
            [
                *common,
                *quiet,
                "--checkpoint",
                prior["checkpoint"],
                "--exp_name",
                f"finetune-{shots}",
                "--finetune_images",
                str(shots),
            ]
        )["rows"]
        for shots in settings.shots
    }


def run_seed(out_dir: str, settings: BenchmarkSettings, seed: int, progress: bool = False) -> dict:
    """One seed: the generated data under ``out_dir/data``, both variants' stages under
    ``out_dir/experiments``; returns ``{"rows": {variant: {N: rows}}, "departure", "groups"}``."""
    data_root = os.path.join(out_dir, "data")
    os.makedirs(data_root)
    benchmark = build_pic_benchmark(
        data_root,
        settings.train_users_per_group,
        settings.test_users_per_group,
        settings.train_images,
        settings.test_images,
        settings.images_per_train_user,
        settings.long_side,
        seed,
        candidates="fixed",
        groups=settings.groups,
    )
    defaults = config_PIC.Config(data_root=data_root)
    write_release_layout(
        load_pic_data(defaults),
        defaults.PIC_release,
        settings.shots,
        defaults.val_fraction,
        defaults.user_test_fraction,
        seed,
    )
    common = [
        "--data-root",
        data_root,
        "--exp_root",
        os.path.join(out_dir, "experiments"),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--seed",
        str(seed),
    ]
    rows = {}
    if "official" in settings.variants:
        rows["official"] = run_official(common, settings)
    if "embedding" in settings.variants:
        rows["embedding"] = run_embedding(common, settings, progress)
    departure = test_user_departure(benchmark, min(settings.shots), seed)
    return {"rows": rows, "departure": departure, "groups": benchmark["groups"]}


def test_user_departure(benchmark: dict, shots: int, seed: int) -> dict[str, float]:
    """Each test user's departure from the training users' average taste, on the user's test images."""
    tastes = read_tastes(benchmark["path"])
    data = load_pic_data(config_PIC.Config(data_root=os.path.dirname(benchmark["path"])))
    departure = {}
    for user in benchmark["test"]:
        test = split_user_images(user, data.images_of(user), shots, 1, config_PIC.Config.user_test_fraction, seed).test
        contents = read_image_contents(benchmark["path"], test)
        images = {}
        for name in test:
            with Image.open(data.image_path(name)) as image:
                images[name] = RatedImageInfo(*image.size, data.human_boxes.get(name), contents[name])
        departure.update(departure_from_average(tastes, benchmark["train"], [user], images, candidates="fixed"))
    return departure


def run_benchmark(
    out_dir: str, settings: BenchmarkSettings = BenchmarkSettings(), progress: bool = False, overwrite: bool = False
) -> dict:
    """Every seed of ``settings`` under ``out_dir/seed-<k>``; returns ``{"seeds": {seed: run_seed's
    result}, "table", "seconds", "settings"}``."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out_dir)
    start = time.time()
    seeds = {}
    for seed in settings.seeds:
        seeds[seed] = run_seed(os.path.join(out_dir, f"seed-{seed}"), settings, seed, progress)
        print(f"seed {seed} done after {(time.time() - start) / 60:.1f} min", flush=True)
    return {
        "seeds": seeds,
        "table": group_table(seeds, settings),
        "seconds": time.time() - start,
        "settings": asdict(settings),
    }


def _group_means(result: dict, group: str, shots: int) -> dict[str, float]:
    """One seed's mean over the group's test users of each (variant, model, metric), and departure."""
    users = [user for user in result["departure"] if group == "all" or result["groups"][user] == group]
    means = {"departure": 100 * float(np.mean([result["departure"][user] for user in users]))}
    for (variant, model), title in MODEL_TITLES.items():
        if variant not in result["rows"]:
            continue
        rows = [row for row in result["rows"][variant][shots] if row["user"] in users and row["model"] == model]
        for metric in METRICS:
            means[f"{title} {metric}"] = float(np.mean([row[metric] for row in rows]))
    return means


def group_table(seeds: dict[int, dict], settings: BenchmarkSettings) -> list[dict]:
    """Per taste group (and all test users) and N: mean and std over seeds of the per-seed means."""
    table = []
    for group in (*settings.groups, "all"):
        for shots in settings.shots:
            per_seed = [_group_means(result, group, shots) for result in seeds.values()]
            first = next(iter(seeds.values()))
            users = [user for user in first["departure"] if group in (first["groups"][user], "all")]
            entry = {"group": group, "N": shots, "seeds": len(per_seed), "users": len(users)}
            for key in per_seed[0]:
                values = [means[key] for means in per_seed]
                entry[f"{key} mean"] = round(float(np.mean(values)), 1)
                entry[f"{key} std"] = round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 1)
            table.append(entry)
    return table


def format_table(table: Sequence[dict], metric: str) -> str:
    """A markdown table of ``metric`` ("srcc" or "acc1_5"): mean ± std over seeds per model column."""
    titles = [title for title in MODEL_TITLES.values() if f"{title} {metric} mean" in table[0]]
    header = ["group", "test users / seed", "N", "departure", *titles]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for entry in table:
        cells = [entry["group"], str(entry["users"]), str(entry["N"]), f"{entry['departure mean']:.1f}"]
        cells += [f"{entry[f'{title} {metric} mean']:.1f} ± {entry[f'{title} {metric} std']:.1f}" for title in titles]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="experiments/bench_pic", help="working folder (data, experiments, table)")
    parser.add_argument("--quick", action="store_true", help="the small settings of tests/test_pic.py")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="these seeds only (default: 0-4)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster than two
    settings = QUICK if args.quick else BenchmarkSettings()
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    result = run_benchmark(args.out, settings, args.progress, args.overwrite)
    text = "\n\n".join(
        f"{METRICS[metric]} (x100), mean ± std over {len(settings.seeds)} seeds:\n\n"
        + format_table(result["table"], metric)
        for metric in METRICS
    )
    with open(os.path.join(args.out, "pic_benchmark.md"), "w") as stream:
        stream.write(text + "\n")
    with open(os.path.join(args.out, "pic_benchmark.csv"), "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(result["table"][0]))
        writer.writeheader()
        writer.writerows(result["table"])
    print(text)
    print(f"settings: {result['settings']}")
    print(f"total {result['seconds'] / 60:.1f} min; written to {args.out}/pic_benchmark.md and .csv")
    return result


if __name__ == "__main__":
    main()
