"""Evaluate crop-scoring checkpoints on GAICD, FCDB and FLMS, and write the paper's table.

Examples:
  python test.py --checkpoint experiments/GAICD_PA_CP/checkpoints/best-srcc.pth --dataset GAICD-human GAICD
  python test.py --table ckpt_a.pth ckpt_b.pth --out results/table   # every protocol, Markdown + CSV
  (an existing results/table.md or .csv is replaced only with --overwrite)

Checkpoints written by our training scripts carry their config; bare state_dicts (the official
release's) are built with the config given on the command line (the paper's defaults).
Faster on a GPU: ``--images-per-batch 16 --precision bf16 --channels_last true`` (images of one
resized size scored together, bf16 autocast, channels-last convolutions).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import sys
from collections.abc import Sequence

import torch

import config_CPC
import config_GAICD
from cropping_dataset import PROTOCOLS, SCORED_DATASETS, evaluation_dataset
from cropping_model import load_crop_model
from untils.atomic import write_text_atomic
from untils.cli import add_debug_option, add_option_aliases, run_script
from untils.config import add_config_arguments, given_config_options
from untils.evaluation import NonFiniteScores, evaluate_anchors, evaluate_scored, pooled_anchor_metrics
from untils.runtime import autocast_dtype, configure_threads, resolve_device

# FCDB+FLMS-human: the human-centric images of both pooled, the paper's column for CPC-trained models.
POOLED = {"FCDB+FLMS-human": ("FCDB-human", "FLMS-human")}
TABLE_COLUMNS = [
    ("GAICD-human", ("acc5", "acc10", "srcc", "wacc5", "wacc10")),
    ("GAICD", ("acc5", "acc10", "srcc", "wacc5", "wacc10")),
    ("FCDB+FLMS-human", ("iou", "disp")),
    ("FCDB-human", ("iou", "disp")),
    ("FCDB", ("iou", "disp")),
    ("FLMS-human", ("iou", "disp")),
    ("FLMS", ("iou", "disp")),
]


def _installed(protocol: str, cfg: config_GAICD.Config) -> bool:
    """Whether the annotation file and image folder of a protocol's dataset are there."""
    name = PROTOCOLS[protocol][0]
    paths = {
        "GAICD": (cfg.GAIC_anno, cfg.GAIC_image),
        "FCDB": (cfg.FCDB_anno, cfg.FCDB_image),
        "FLMS": (cfg.FLMS_anno, cfg.FLMS_image),
    }[name]
    return os.path.isfile(paths[0]) and os.path.isdir(paths[1])


def evaluate_protocol(
    model: torch.nn.Module,
    protocol: str,
    gaicd_cfg: config_GAICD.Config,
    cpc_cfg: config_GAICD.Config,
    num_workers: int = 0,
    progress: bool = True,
    images_per_batch: int | None = None,
) -> dict[str, float]:
    """One protocol of :data:`cropping_dataset.PROTOCOLS`. GAICD is read with ``gaicd_cfg`` (the
    model's resizing), FCDB and FLMS with ``cpc_cfg``; precision and memory format come from
    ``gaicd_cfg``, and ``images_per_batch`` images of one resized size go through each forward
    (default ``gaicd_cfg.images_per_step``)."""
    name, only_human = PROTOCOLS[protocol]
    data_cfg = gaicd_cfg if name in SCORED_DATASETS else cpc_cfg
    evaluate = evaluate_scored if name in SCORED_DATASETS else evaluate_anchors
    return evaluate(
        model,
        evaluation_dataset(data_cfg, name, only_human),
        images_per_batch or gaicd_cfg.images_per_step,
        num_workers,
        progress,
        protocol,
        autocast_dtype(gaicd_cfg.precision),
        gaicd_cfg.channels_last,
    )


def table_paths(out_prefix: str) -> tuple[str, str]:
    return out_prefix + ".md", out_prefix + ".csv"


def refuse_existing_table(out_prefix: str) -> None:
    """Stop before evaluating when the table's files exist: they are replaced only with --overwrite."""
    existing = [path for path in table_paths(out_prefix) if os.path.lexists(path)]
    if existing:
        raise FileExistsError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --overwrite to replace, or choose another --out"
        )


def write_table(rows: list[tuple[str, dict[str, dict[str, float]]]], out_prefix: str) -> tuple[str, str]:
    """The paper's table as ``<out_prefix>.md`` and ``<out_prefix>.csv``, each written whole or not at all."""
    header = ["model"] + [f"{protocol} {metric}" for protocol, metrics in TABLE_COLUMNS for metric in metrics]
    lines = []
    for name, results in rows:
        cells = [name]
        for protocol, metrics in TABLE_COLUMNS:
            for metric in metrics:
                value = results.get(protocol, {}).get(metric)
                cells.append("" if value is None else f"{value:.4f}")
        lines.append(cells)
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    md_path, csv_path = table_paths(out_prefix)
    markdown = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    markdown += "".join("| " + " | ".join(cells) + " |\n" for cells in lines)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(lines)
    write_text_atomic(md_path, markdown)
    write_text_atomic(csv_path, table.getvalue())
    return md_path, csv_path


def evaluate_checkpoint(
    path: str,
    model: torch.nn.Module,
    protocols: list[str],
    base: config_GAICD.Config,
    cpc_cfg: config_CPC.Config,
    progress: bool,
    images_per_batch: int | None,
) -> dict[str, dict[str, float]]:
    """The metrics of one loaded checkpoint on ``protocols`` (printed as they come); scores that are
    NaN or infinite end the run with an error naming ``path``."""
    model_cfg = model.cfg
    if not isinstance(model_cfg, config_GAICD.Config):  # load_crop_model gives every model its config
        raise TypeError(f"{path}: the loaded model has no config_GAICD.Config but {type(model_cfg).__name__}")
    # FCDB and FLMS as the CPC recipe reads them (fixed 256x256), in the model's own preprocessing
    anchor_cfg = dataclasses.replace(
        cpc_cfg,
        image_preprocessing=model_cfg.image_preprocessing,
        keep_aspect_ratio=model_cfg.image_preprocessing == "gaic",
    )
    results: dict[str, dict[str, float]] = {}
    for protocol in protocols:
        try:
            if protocol in POOLED:
                parts = [
                    results.get(part)
                    or evaluate_protocol(
                        model, part, model_cfg, anchor_cfg, base.num_workers, progress, images_per_batch
                    )
                    for part in POOLED[protocol]
                    if part in results or not base.skip_missing or _installed(part, anchor_cfg)
                ]
                if len(parts) < len(POOLED[protocol]):
                    print(f"{protocol}: skipped (not every dataset it pools is installed)")
                    continue
                results[protocol] = pooled_anchor_metrics(parts)
            elif base.skip_missing and not _installed(
                protocol, model_cfg if protocol.startswith("GAICD") else anchor_cfg
            ):
                print(f"{protocol}: skipped (its dataset is not installed)")
                continue
            else:
                results[protocol] = evaluate_protocol(
                    model, protocol, model_cfg, anchor_cfg, base.num_workers, progress, images_per_batch
                )
        except NonFiniteScores as error:
            raise NonFiniteScores(f"checkpoint {path}: {error}") from None
        shown = ", ".join(f"{k}={v:.4f}" for k, v in results[protocol].items() if isinstance(v, float))
        print(f"{path} {protocol}: {shown}")
        undefined = [k for k, v in results[protocol].items() if isinstance(v, float) and math.isnan(v)]
        if undefined:
            print(
                f"note: {', '.join(undefined)} of {path} on {protocol} are NaN: on some image the model's scores "
                "are all equal, which has no correlation (the release's rule)",
                file=sys.stderr,
            )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint to evaluate (ours or the official release's)")
    parser.add_argument(
        "--dataset",
        nargs="+",
        choices=list(PROTOCOLS) + list(POOLED),
        default=["GAICD-human", "GAICD"],
        help="protocols to evaluate --checkpoint on",
    )
    parser.add_argument(
        "--table",
        nargs="+",
        metavar="CKPT",
        help="evaluate these checkpoints on every protocol and write the paper's table",
    )
    parser.add_argument("--out", default="results/table", help="output prefix for --table (.md and .csv)")
    parser.add_argument("--overwrite", action="store_true", help="replace the --out table files if they exist")
    parser.add_argument(
        "--images-per-batch",
        type=int,
        metavar="N",
        help="images of one resized size scored per forward (default: the config's images_per_step)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load checkpoints that hold more than tensors and plain data (UNSAFE: such a file can "
        "run code; only for files you made yourself with an older version)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_option(parser)
    add_config_arguments(parser, config_GAICD.Config, exclude=config_GAICD.TRAINING_OPTIONS)
    args = add_option_aliases(parser).parse_args(argv)
    if not args.checkpoint and not args.table:
        parser.error("give --checkpoint (with --dataset) or --table CKPT...")
    if args.images_per_batch is not None and args.images_per_batch < 1:
        parser.error(f"--images-per-batch must be >= 1, got {args.images_per_batch}")
    given = given_config_options(args)
    configure_threads()
    base = config_GAICD.Config(**given)
    cpc_cfg = config_CPC.Config(**given)  # same data paths; CPC's defaults for FCDB/FLMS (fixed 256x256)
    overrides = {**given, "data_root": base.data_root}
    device = resolve_device(base.device, base.gpu_id)

    checkpoints = args.table or [args.checkpoint]
    protocols = list(PROTOCOLS) + list(POOLED) if args.table else args.dataset
    if args.table and not args.overwrite:
        refuse_existing_table(args.out)
    rows = []
    for path in checkpoints:
        model = load_crop_model(path, device, overrides, trusted=args.trust_checkpoint)
        rows.append(
            (
                os.path.basename(path),
                evaluate_checkpoint(path, model, protocols, base, cpc_cfg, not args.no_progress, args.images_per_batch),
            )
        )
    if args.table:
        md_path, csv_path = write_table(rows, args.out)
        print(f"table written to {md_path} and {csv_path}")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
