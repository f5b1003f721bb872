"""Evaluate crop-scoring checkpoints on GAICD, FCDB and FLMS, and write the paper's table.

Examples:
  python test.py --checkpoint experiments/GAICD_PA_CP/checkpoints/best-srcc.pth --dataset GAICD-human GAICD
  python test.py --table ckpt_a.pth ckpt_b.pth --out results/table   # every protocol, Markdown + CSV

Checkpoints written by our training scripts carry their config; bare state_dicts (the official
release's) are built with the config given on the command line (the paper's defaults).
Faster on a GPU: ``--images-per-batch 16 --precision bf16 --channels_last true`` (images of one
resized size scored together, bf16 autocast, channels-last convolutions).
"""
from __future__ import annotations

import argparse
import csv
import os
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

import config_CPC
import config_GAICD
from cropping_dataset import FCDBDataset, FLMSDataset, GAICDataset, collate_crops
from cropping_model import GAICModel, build_crop_model
from untils.boxes import partition_masks
from untils.checkpoint import config_from_checkpoint, load_model_weights, read_checkpoint
from untils.config import add_config_arguments
from untils.metrics import best_crop_in_original, compute_iou_and_disp, crop_metrics, gaicd_metrics
from untils.runtime import autocast, autocast_dtype, resolve_device

PROTOCOLS = {
    "GAICD-human": ("GAICD", True), "GAICD": ("GAICD", False),
    "FCDB-human": ("FCDB", True), "FCDB": ("FCDB", False),
    "FLMS-human": ("FLMS", True), "FLMS": ("FLMS", False),
}
TABLE_COLUMNS = [("GAICD-human", ("acc5", "acc10", "srcc")), ("GAICD", ("acc5", "acc10", "srcc")),
                 ("FCDB-human", ("iou", "disp")), ("FCDB", ("iou", "disp")),
                 ("FLMS-human", ("iou", "disp")), ("FLMS", ("iou", "disp"))]
# Crop masks stay on the host: the crop models compute what they need from the crop boxes.
_TENSOR_KEYS = ("image", "crop_box", "human_box", "partition_mask", "crop_valid", "score", "heat_map")


_FIELDS_FOR_CROP_METRICS = ("crop_box", "crop_valid", "gt_crops", "width", "height")


def move_batch(batch: dict, device: torch.device) -> dict:
    """Tensors a crop model reads from a collated batch, on ``device`` (non-blocking from pinned memory)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) and k in _TENSOR_KEYS else v)
            for k, v in batch.items()}


def model_outputs(model: torch.nn.Module, batch: dict, autocast_dtype: Optional[torch.dtype] = None,
                  channels_last: bool = False) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
    """``(partition_feat, heat_map, score)`` of any crop model for a collated batch on its device.

    Partition masks missing from the batch are built on the device from the person boxes. Crop
    masks are not read from the batch: every dataset rasterises them from the crop boxes, and the
    human-centric model derives their exact effect from the boxes itself, without a per-crop mask
    convolution. ``autocast_dtype`` (torch.bfloat16 or torch.float16) runs the forward under
    autocast on the batch's device; ``channels_last`` passes the image channels-last (convert the
    model's weights once with ``model.to(memory_format=torch.channels_last)``; both formats give
    the same scores).
    """
    image = batch["image"]
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    height, width = image.shape[-2:]
    crop_box = batch["crop_box"]
    crop_valid = batch.get("crop_valid")
    with autocast(image.device, autocast_dtype):
        if isinstance(getattr(model, "module", model), GAICModel):
            return None, None, model(image, crop_box, crop_valid=crop_valid)
        partition_mask = batch.get("partition_mask")
        if partition_mask is None:
            partition_mask = partition_masks(batch["human_box"], width, height)
        return model(image, crop_box, batch["human_box"], None, partition_mask, crop_valid=crop_valid)


def shard_for_this_process(dataset: Dataset) -> Dataset:
    """Under torch.distributed, this process's share of ``dataset`` (every world-size-th image)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dataset
    rank, world = dist.get_rank(), dist.get_world_size()
    if isinstance(dataset, Subset):
        return Subset(dataset.dataset, dataset.indices[rank::world])
    return Subset(dataset, list(range(rank, len(dataset), world)))


def gather_from_processes(values: list) -> list:
    """Every process's ``values`` concatenated (rank order); the list itself without distribution."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return [value for part in gathered for value in part]


def bucketed_loader(dataset: Dataset, images_per_batch: int = 1, num_workers: int = 0,
                    pin_memory: bool = False) -> DataLoader:
    """Evaluation loader: images of the same resized size batched together, in dataset order."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    indices = range(len(dataset))
    if isinstance(dataset, Subset):
        sizes = [base.resized_size_of(i) for i in dataset.indices]
    else:
        sizes = [base.resized_size_of(i) for i in indices]
    groups: dict[Any, list[int]] = {}
    for index, size in zip(indices, sizes):
        groups.setdefault(tuple(size), []).append(index)
    batches = [members[i:i + images_per_batch] for members in groups.values()
               for i in range(0, len(members), images_per_batch)]
    batches.sort(key=lambda b: b[0])
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_crops, num_workers=num_workers,
                      pin_memory=pin_memory)


def _prepare_for_inference(model: torch.nn.Module, channels_last: bool) -> torch.device:
    """Eval mode, channels-last weights when asked (in place, once); returns the model's device."""
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return next(model.parameters()).device


@torch.no_grad()
def evaluate_scored(model: torch.nn.Module, dataset: Dataset, images_per_batch: int = 1, num_workers: int = 0,
                    progress: bool = True, description: str = "evaluating",
                    autocast_dtype: Optional[torch.dtype] = None, channels_last: bool = False) -> dict[str, float]:
    """Acc_K/N, Acc5, Acc10, SRCC and PCC of ``model`` on a dataset of scored crops (GAICD, CPC).

    Images of one resized size are scored ``images_per_batch`` at a time; the scores stay on the
    device until every batch is queued (no host-device synchronisation per image or batch).
    ``autocast_dtype`` and ``channels_last`` are :func:`model_outputs`'s (``channels_last``
    converts the model's weights in place).
    """
    if len(dataset) == 0:
        raise ValueError(f"no images to evaluate ({description})")
    device = _prepare_for_inference(model, channels_last)
    dataset = shard_for_this_process(dataset)
    loader = bucketed_loader(dataset, images_per_batch, num_workers, pin_memory=device.type == "cuda")
    scored = []  # (device scores (B, N), host ground truth (B, N), host crop_valid (B, N)) per batch
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        _, _, score = model_outputs(model, move_batch(batch, device), autocast_dtype, channels_last)
        scored.append((score, batch["score"], batch["crop_valid"]))
    gt_scores, pr_scores = [], []
    for score, truth, valid in scored:
        score = score.float().cpu()
        for image in range(score.shape[0]):
            gt_scores.append(truth[image][valid[image]].double().numpy())
            pr_scores.append(score[image][valid[image]].double().numpy())
    gt_scores, pr_scores = gather_from_processes(gt_scores), gather_from_processes(pr_scores)
    results = gaicd_metrics(gt_scores, pr_scores)
    results["images"] = len(gt_scores)
    return results


def evaluate_on_GAICD(model: torch.nn.Module, cfg, only_human: bool = True, split: str = "test",
                      names: Optional[Iterable[str]] = None, images_per_batch: int = 1, num_workers: int = 0,
                      progress: bool = True, autocast_dtype: Optional[torch.dtype] = None,
                      channels_last: bool = False) -> dict[str, float]:
    """GAICD metrics on ``split`` (restricted to the images ``names`` when given).

    Batching and the options are :func:`evaluate_scored`'s.
    """
    dataset = GAICDataset(cfg, split=split, only_human_images=only_human,
                          keep_aspect_ratio=cfg.keep_aspect_ratio, augment=False)
    if names is not None:
        wanted = set(names)
        dataset = Subset(dataset, [i for i, name in enumerate(dataset.names) if name in wanted])
    description = f"GAICD {split}{' human' if only_human else ''}"
    return evaluate_scored(model, dataset, images_per_batch, num_workers, progress, description,
                           autocast_dtype, channels_last)


@torch.no_grad()
def evaluate_on_FCDB_and_FLMS(model: torch.nn.Module, cfg, dataset: str = "FCDB", only_human: bool = True,
                              num_workers: int = 0, progress: bool = True, images_per_batch: int = 1,
                              autocast_dtype: Optional[torch.dtype] = None,
                              channels_last: bool = False) -> dict[str, float]:
    """IoU, Disp and recall (IoU >= 0.75) of the best of the 1,745 predefined anchors.

    Batching and the options are :func:`evaluate_scored`'s.
    """
    device = _prepare_for_inference(model, channels_last)
    dataset_cls = {"FCDB": FCDBDataset, "FLMS": FLMSDataset}[dataset]
    data = dataset_cls(cfg, only_human_images=only_human, keep_aspect_ratio=cfg.keep_aspect_ratio,
                       with_crop_masks=False)
    loader = bucketed_loader(shard_for_this_process(data), images_per_batch, num_workers,
                             pin_memory=device.type == "cuda")
    scored = []  # (device scores (B, N), resized (w, h), the host fields the metrics need) per batch
    for batch in tqdm(loader, desc=f"{dataset}{' human' if only_human else ''}", disable=not progress, leave=False):
        _, _, score = model_outputs(model, move_batch(batch, device), autocast_dtype, channels_last)
        resized = (batch["image"].shape[-1], batch["image"].shape[-2])
        scored.append((score, resized, {key: batch[key] for key in _FIELDS_FOR_CROP_METRICS}))
    results = []
    for score, resized, fields in scored:
        score = score.float().cpu()
        for image in range(score.shape[0]):
            original = (int(fields["width"][image]), int(fields["height"][image]))
            valid = fields["crop_valid"][image]
            pred = best_crop_in_original(fields["crop_box"][image][valid], score[image][valid], resized, original)
            results.append(compute_iou_and_disp(fields["gt_crops"][image], pred, *original))
    results = gather_from_processes(results)
    metrics = crop_metrics(results)
    metrics["images"] = len(results)
    return metrics


def evaluate_protocol(model: torch.nn.Module, protocol: str, gaicd_cfg, cpc_cfg, num_workers: int = 0,
                      progress: bool = True, images_per_batch: Optional[int] = None) -> dict[str, float]:
    """One protocol of :data:`PROTOCOLS`; precision and memory format from ``gaicd_cfg``, and
    ``images_per_batch`` images of one resized size per forward (default ``gaicd_cfg.images_per_step``)."""
    dataset, only_human = PROTOCOLS[protocol]
    options = {"images_per_batch": images_per_batch or gaicd_cfg.images_per_step,
               "autocast_dtype": autocast_dtype(gaicd_cfg.precision), "channels_last": gaicd_cfg.channels_last}
    if dataset == "GAICD":
        return evaluate_on_GAICD(model, gaicd_cfg, only_human=only_human, num_workers=num_workers, progress=progress,
                                 **options)
    return evaluate_on_FCDB_and_FLMS(model, cpc_cfg, dataset, only_human, num_workers, progress, **options)


def load_model(checkpoint_path: str, overrides: dict, device: torch.device,
               config_cls: type = config_GAICD.Config) -> tuple[torch.nn.Module, Any]:
    """A model built from the checkpoint's config (``overrides`` win) with its weights, in eval mode."""
    checkpoint = read_checkpoint(checkpoint_path)
    cfg = config_from_checkpoint(checkpoint, config_cls, overrides)
    model = build_crop_model(cfg, checkpoint.get("model_type", cfg.model_type), loadweights=False)
    load_model_weights(model, checkpoint)
    return model.to(device).eval(), cfg


def write_table(rows: list[tuple[str, dict[str, dict[str, float]]]], out_prefix: str) -> tuple[str, str]:
    """The paper's table as ``<out_prefix>.md`` and ``<out_prefix>.csv``."""
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
    md_path, csv_path = out_prefix + ".md", out_prefix + ".csv"
    with open(md_path, "w") as stream:
        stream.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for cells in lines:
            stream.write("| " + " | ".join(cells) + " |\n")
    with open(csv_path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(lines)
    return md_path, csv_path


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint to evaluate (ours or the official release's)")
    parser.add_argument("--dataset", nargs="+", choices=list(PROTOCOLS), default=["GAICD-human", "GAICD"],
                        help="protocols to evaluate --checkpoint on")
    parser.add_argument("--table", nargs="+", metavar="CKPT", help="evaluate these checkpoints on every protocol "
                        "and write the paper's table")
    parser.add_argument("--out", default="results/table", help="output prefix for --table (.md and .csv)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="with --table, leave a protocol's cells empty when its dataset is not installed")
    parser.add_argument("--images-per-batch", type=int, metavar="N",
                        help="images of one resized size scored per forward (default: the config's images_per_step)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, config_GAICD.Config)
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.table:
        parser.error("give --checkpoint (with --dataset) or --table CKPT...")
    if args.images_per_batch is not None and args.images_per_batch < 1:
        parser.error(f"--images-per-batch must be >= 1, got {args.images_per_batch}")
    given = {key[len("cfg__"):]: value for key, value in vars(args).items() if key.startswith("cfg__")}
    base = config_GAICD.Config(**given)
    cpc_cfg = config_CPC.Config(**given)  # same data paths; CPC's defaults for FCDB/FLMS (fixed 256x256)
    overrides = {**given, "data_root": base.data_root}
    device = resolve_device(base.device, base.gpu_id)

    checkpoints = args.table or [args.checkpoint]
    protocols = list(PROTOCOLS) if args.table else args.dataset
    rows = []
    for path in checkpoints:
        model, cfg = load_model(path, overrides, device)
        results = {}
        for protocol in protocols:
            try:
                results[protocol] = evaluate_protocol(model, protocol, cfg, cpc_cfg, base.num_workers,
                                                      progress=not args.no_progress,
                                                      images_per_batch=args.images_per_batch)
            except FileNotFoundError as error:
                if not (args.table and args.skip_missing):
                    raise
                print(f"{protocol}: skipped ({error})")
                continue
            shown = ", ".join(f"{k}={v:.4f}" for k, v in results[protocol].items() if isinstance(v, float))
            print(f"{path} {protocol}: {shown}")
        rows.append((os.path.basename(path), results))
    if args.table:
        md_path, csv_path = write_table(rows, args.out)
        print(f"table written to {md_path} and {csv_path}")


if __name__ == "__main__":
    main()
