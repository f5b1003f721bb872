"""Generate the pseudo heat maps that supervise the content-preserving branch.

For each image the candidate crops are sorted by score; with more than 10 crops only those scoring
above the dataset's mean score are kept (all of them when none is). Each kept crop's binary mask at
image resolution is weighted by softmax(score + 2 * crop area / image area); the weighted sum,
min-max normalised to 0..255, is written as an 8-bit PNG ``<out>/<dataset>/mask/<image stem>.png``.
For human-centric images a figure also goes to ``<out>/<dataset>/display/`` (``pseudo_heatmaps.py``).

    python generate_pseudo_heatmap.py --dataset GAICD --data-root ./dataset --workers 2
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from pseudo_heatmaps import DATASETS, generate_heatmaps, load_sources


def main(argv: Optional[Sequence[str]] = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description="Generate the pseudo heat maps (content-preservation targets) of GAICD or CPC: "
                    "<out>/<dataset>/mask/<stem>.png, plus figures for human-centric images in "
                    "<out>/<dataset>/display/.")
    parser.add_argument("--dataset", choices=DATASETS, default="GAICD", help="dataset to process (default: GAICD)")
    parser.add_argument("--data-root", default=None,
                        help="folder holding GAICD/ and CPCDataset/ (default: the config's data_root)")
    parser.add_argument("--out", default=None, help="output folder (default: <data-root>/heat_map_gt)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (default: min(4, CPU count))")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose heat map already exists")
    parser.add_argument("--only-human", action="store_true", help="only the human-centric images")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images")
    args = parser.parse_args(argv)
    if args.dataset == "GAICD":
        from config_GAICD import Config
    else:
        from config_CPC import Config
    cfg = Config() if args.data_root is None else Config(data_root=args.data_root)
    images = None
    if args.only_human or args.limit is not None:
        annotations, human_names, _ = load_sources(args.dataset, cfg)
        images = [name for name in annotations if name in human_names or not args.only_human][:args.limit]
    paths = generate_heatmaps(args.dataset, cfg, args.out, workers=args.workers, overwrite=args.overwrite,
                              images=images)
    print(f"{len(paths)} heat maps in {os.path.dirname(paths[0]) if paths else args.out}")
    return paths


if __name__ == "__main__":
    main()
