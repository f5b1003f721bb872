"""Generate the pseudo heat maps that supervise the content-preserving branch.

For each image the candidate crops are sorted by score; with more than 10 crops only those scoring
above the dataset's mean score are kept (all of them when none is). Each kept crop's binary mask at
image resolution is weighted by softmax(score + 2 * crop area / image area); the weighted sum,
min-max normalised to 0..255, is written as an 8-bit PNG ``<out>/<dataset>/mask/<image stem>.png``.
For human-centric images a figure also goes to ``<out>/<dataset>/display/`` (``untils/pseudo_heatmaps.py``).

    python generate_pseudo_heatmap.py --dataset GAICD --data-root ./dataset --workers 2
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from cropping_dataset import SCORED_DATASETS, heat_map_sources
from untils.cli import add_debug_option, add_option_aliases, run_script
from untils.pseudo_heatmaps import generate_heatmaps
from untils.runtime import default_workers


def main(argv: Sequence[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description="Generate the pseudo heat maps (content-preservation targets) of GAICD or CPC: "
        "<out>/<dataset>/mask/<stem>.png, plus figures for human-centric images in "
        "<out>/<dataset>/display/."
    )
    parser.add_argument(
        "--dataset", choices=SCORED_DATASETS, default="GAICD", help="dataset to process (default: GAICD)"
    )
    parser.add_argument(
        "--data-root", default=None, help="folder holding GAICD/ and CPCDataset/ (default: the config's data_root)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: <data-root>/heat_map_gt)")
    parser.add_argument(
        "--num-workers",
        dest="num_workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: one fewer than the CPUs free now, at most 4)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo images whose heat map already exists")
    parser.add_argument("--only-human", action="store_true", help="only the human-centric images")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images")
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="with a partial dataset, process the images that are there (how many were skipped is printed)",
    )
    parser.add_argument(
        "--fix-edge-cases",
        action="store_true",
        help="keep every crop of an image with none above the mean, and write a map without "
        "contrast as uniform 255 (the release writes all-zero maps for both; see README)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_option(parser)
    args = add_option_aliases(parser, renamed={"--workers": "--num-workers"}).parse_args(argv)
    if args.num_workers is not None and args.num_workers < 0:
        parser.error(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.dataset == "GAICD":
        from config_GAICD import Config
    else:
        from config_CPC import Config
    options = {"skip_missing": args.skip_missing}
    cfg = Config(**options) if args.data_root is None else Config(data_root=args.data_root, **options)
    sources = heat_map_sources(args.dataset, cfg)
    images = None
    if args.only_human or args.limit is not None:
        images = [name for name in sources.annotations if name in sources.human_names or not args.only_human]
        images = images[: args.limit]
    out_dir = cfg.heat_map_dir if args.out is None else args.out
    if out_dir is None:
        parser.error("no heat map folder: give --out or the config's heat_map_dir")
    workers = default_workers() if args.num_workers is None else args.num_workers
    paths = generate_heatmaps(
        args.dataset,
        sources,
        out_dir,
        workers=workers,
        overwrite=args.overwrite,
        images=images,
        fix_edge_cases=args.fix_edge_cases,
        progress=not args.no_progress,
    )
    print(f"{len(paths)} heat maps in {os.path.dirname(paths[0]) if paths else out_dir}")
    return paths


if __name__ == "__main__":
    raise SystemExit(run_script(main))
