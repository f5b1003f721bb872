"""Speed of the human-centric crop model: inference, where its time goes, training, and the limit.

  python benchmarks/bench_model.py                          # vgg16 and mobilenetv2 on the default device
  python benchmarks/bench_model.py --device cuda            # fp32 and bf16, channels-last
  python benchmarks/bench_model.py --backbones mobilenetv2 --batch-sizes 1 4 --repeats 3 --no-compile

For each backbone, the human-centric model with the paper's config and RANDOM-INIT weights (timing
does not depend on them) scores a 256x352 input with the 90 GAIC-grid candidates of a 352x256
image and a person box, through ``untils.inference.run_model`` (the evaluation path):

* inference: images/s at batch 1 and at each ``--batch-sizes`` (the best is reported), per
  setting (dtype: fp32 or autocast bf16/fp16; memory format: contiguous or channels-last);
* where the time goes at batch 1: the backbone, the content-preserving crop features, and the
  rest (feature aggregation, partition-aware module, heat map, RoI/RoD align, heads), timed
  inside the same forward calls (median shares);
* a training step: one image, ``--views`` of its crops, forward, the training loss (score
  losses of ``cfg.loss_type`` + content L1 on a heat map), backward, Adam step; seconds and peak
  memory (CUDA: ``max_memory_allocated``; CPU: peak resident set size of a fresh process that
  only builds the model and runs the steps, and its rise over the built model);
* the physical limit: the backbone's FLOPs per image (``torch.utils.flop_counter``) against the
  measured throughput of a large matmul in the setting's dtype, i.e. the
  images/s no implementation of this backbone can beat on this device, and the share reached;
* the content features of one image's 90 crops two ways: the release's formulation (every
  crop's [heat map, mask] pair through all layers) and the factored box-mask path the model runs;
* ``torch.compile`` (inductor) against eager at batch 1, fp32, contiguous (``--no-compile`` skips);
* with ``--only epoch`` (and nothing else): one training epoch of GAICD's size through the real
  training loop (``train_on_GAICD.GAICDTrainer.train_epoch``: the paper's recipe, batch 1,
  ``--views`` views, DataLoader workers, pinned memory, the loss, Adam, the logs) over an in-memory
  dataset of 256x352 images with their 90 GAIC-grid crops (no files are decoded). Two short warm-up
  epochs come first; with ``--epoch-budget-s`` fewer than ``--epoch-images`` images are timed when
  the second predicts a longer epoch, and the time is extrapolated to 1,036 images (said so).

``--only compile`` runs the torch.compile comparison alone; ``--json PATH`` also writes every
number as JSON (for ``benchmarks/gpu_check.py``).

Timing: ``--warmup`` calls first, then ``--repeats`` timed calls (CPU wall clock; CUDA events);
medians are reported. The machine's load average is printed before and after: on a shared
machine, repeat the run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_epoch import GAICD_TRAIN_IMAGES, epoch_section  # noqa: E402
from model_timing import (  # noqa: E402
    DTYPES,
    Setting,
    build_model,
    machine_description,
    make_batch,
    resident_bytes,
    synchronize,
    time_calls,
)

import rod_align  # noqa: E402
import roi_align  # noqa: E402
from cropping_model import HumanCentricCroppingModel, crop_score_loss  # noqa: E402
from untils.atomic import write_json_atomic  # noqa: E402
from untils.boxes import crop_mask_factors, crop_masks  # noqa: E402
from untils.inference import run_model  # noqa: E402


@torch.no_grad()
def inference_rates(
    model: HumanCentricCroppingModel,
    setting: Setting,
    batch_sizes: list[int],
    height: int,
    width: int,
    repeats: int,
    warmup: int,
) -> dict[int, float]:
    """Median images/s of ``run_model`` for each batch size."""
    rates = {}
    for size in batch_sizes:
        batch = make_batch(size, height, width, setting.device)
        seconds = time_calls(
            functools.partial(run_model, model, batch, setting.autocast_dtype, setting.channels_last),
            setting.device,
            repeats,
            warmup,
        )
        rates[size] = size / statistics.median(seconds)
    return rates


@contextlib.contextmanager
def timing_calls_of(owner: object, method: str, device: torch.device, spans: list):
    """Record the duration of every call of ``owner.method`` into ``spans`` (CUDA events on CUDA)."""
    original = getattr(owner, method)

    def timed(*args, **kwargs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = original(*args, **kwargs)
            end.record()
            spans.append((start, end))
        else:
            begin = time.perf_counter()
            result = original(*args, **kwargs)
            spans.append(time.perf_counter() - begin)
        return result

    setattr(owner, method, timed)
    try:
        yield
    finally:
        delattr(owner, method)  # the class's method again


def seconds_of(spans: list) -> list[float]:
    return [span if isinstance(span, float) else span[0].elapsed_time(span[1]) / 1000.0 for span in spans]


@torch.no_grad()
def time_split(
    model: HumanCentricCroppingModel, setting: Setting, height: int, width: int, repeats: int, warmup: int
) -> dict[str, float]:
    """Median shares of the backbone and of the content crop features in whole batch-1 forwards.

    Both parts are timed inside the same calls as the whole, so the shares of one call add up.
    """
    batch = make_batch(1, height, width, setting.device)
    backbone, content = [], []
    with (
        timing_calls_of(model.backbone, "forward", setting.device, backbone),
        timing_calls_of(model.content_preserve, "crop_features", setting.device, content),
    ):
        total = time_calls(
            lambda: run_model(model, batch, setting.autocast_dtype, setting.channels_last),
            setting.device,
            repeats,
            warmup,
        )
    # one backbone and one content-feature call per forward: a mismatch would pair parts of different calls
    calls = list(zip(seconds_of(backbone)[warmup:], seconds_of(content)[warmup:], total, strict=True))
    return {
        "backbone": statistics.median(b / t for b, _, t in calls),
        "content": statistics.median(c / t for _, c, t in calls),
        "rest": statistics.median((t - b - c) / t for b, c, t in calls),
    }


def training_step(
    model: HumanCentricCroppingModel,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    setting: Setting,
    scaler: torch.amp.GradScaler,
) -> None:
    """Forward, the training loss, backward and an Adam step on one batch."""
    cfg = model.cfg
    score, heat_map, _ = run_model(model, batch, setting.autocast_dtype, setting.channels_last)
    loss = crop_score_loss(
        score.float(), batch["score"], cfg.loss_type, batch["crop_valid"], rank_loss_weighting=cfg.rank_loss_weighting
    )
    loss = loss + cfg.content_loss_weight * F.l1_loss(heat_map.float(), batch["heat_map"])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def training_stats(
    backbone: str, setting: Setting, views: int, height: int, width: int, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds of a training step, peak memory and the memory of the built model (bytes)."""
    if setting.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setting.device)
    model = build_model(backbone, setting).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=model.cfg.lr, weight_decay=model.cfg.weight_decay)
    scaler = torch.amp.GradScaler(setting.device.type, enabled=setting.dtype == torch.float16)
    batch = make_batch(1, height, width, setting.device, crops=views)
    generator = torch.Generator().manual_seed(1)
    batch["score"] = (1 + 4 * torch.rand(1, views, generator=generator)).to(setting.device)
    batch["heat_map"] = torch.rand(1, 1, 64, 64, generator=generator).to(setting.device)
    built = resident_bytes(setting.device)
    seconds = time_calls(
        lambda: training_step(model, optimizer, batch, setting, scaler), setting.device, repeats, warmup
    )
    return {"step": statistics.median(seconds), "peak": resident_bytes(setting.device), "built": built}


def _training_stats_in_fresh_process(arguments: tuple) -> dict[str, float]:
    backbone, device, dtype, channels_last, threads, views, height, width, repeats, warmup = arguments
    torch.set_num_threads(threads)
    setting = Setting(torch.device(device), DTYPES[dtype], channels_last)
    return training_stats(backbone, setting, views, height, width, repeats, warmup)


def measured_training_stats(backbone: str, setting: Setting, args: argparse.Namespace) -> dict[str, float]:
    """:func:`training_stats`; on the CPU in a fresh process, so that its peak RSS is the steps' own."""
    if setting.device.type == "cuda":
        return training_stats(backbone, setting, args.views, args.height, args.width, args.repeats, args.warmup)
    dtype = str(setting.dtype).replace("torch.", "")
    arguments = (
        backbone,
        str(setting.device),
        dtype,
        setting.channels_last,
        args.threads,
        args.views,
        args.height,
        args.width,
        args.repeats,
        args.warmup,
    )
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_training_stats_in_fresh_process, (arguments,))


def counted_flops(backbone: str, height: int, width: int) -> dict[str, float]:
    """FLOPs (multiply and add counted apart) per image of the backbone and of the whole forward."""
    cpu = Setting(torch.device("cpu"), torch.float32, False)
    model = build_model(backbone, cpu).eval()
    batch = make_batch(1, height, width, cpu.device)
    counts = {}
    with torch.no_grad():
        for name, call in (
            ("backbone", lambda: model.backbone(batch["image"])),
            ("model", lambda: run_model(model, batch)),
        ):
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            counts[name] = float(counter.get_total_flops())
    return counts


def matmul_throughput(device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of a large square matmul in ``dtype`` (bf16/fp16: what autocast runs the convolutions in).

    fp32 on CUDA is measured with TF32 matmuls when cuDNN's convolutions use TF32 (PyTorch's
    default), so that the bound is the one the backbone's convolutions run against.
    """
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = previous or tf32
    try:
        seconds = time_calls(lambda: a @ b, device, repeats, warmup=2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2.0 * size**3 / min(seconds)


@torch.no_grad()
def content_feature_paths(backbone: str, height: int, width: int, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of the content features of one image's 90 crops, fp32 on the CPU, two ways:
    the release's formulation (``crop_features_reference``: ``content_feat_layer`` on stacked
    [heat map, mask] pairs) and the factored box masks (``crop_features``, what the model runs)."""
    cpu = Setting(torch.device("cpu"), torch.float32, False)
    model = build_model(backbone, cpu).eval()
    batch = make_batch(1, height, width, cpu.device)
    content = model.content_preserve
    heat_map = content.predict_heat_map(model.reduced_features(batch["image"]))
    boxes = batch["crop_box"].reshape(-1, 4)
    image_index = torch.zeros(len(boxes), dtype=torch.long)
    masks = crop_masks(boxes, width, height)
    paths = {
        "release": lambda: content.crop_features_reference(heat_map, masks, image_index),
        "boxes": lambda: content.crop_features(heat_map, *crop_mask_factors(boxes, width, height), image_index),
    }
    return {name: statistics.median(time_calls(call, cpu.device, repeats, warmup)) for name, call in paths.items()}


@torch.no_grad()
def compile_comparison(
    backbone: str, device: torch.device, height: int, width: int, repeats: int, warmup: int, backend: str = "inductor"
) -> dict[str, float]:
    """Batch-1 images/s eager and compiled with ``backend`` (fp32, contiguous), and the compile time."""
    setting = Setting(device, torch.float32, False)
    model = build_model(backbone, setting).eval()
    batch = make_batch(1, height, width, device)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    begin = time.perf_counter()
    run_model(compiled, batch)
    synchronize(device)
    compile_seconds = time.perf_counter() - begin
    rates = {}
    for name, candidate in (("eager", model), ("compiled", compiled)):
        seconds = time_calls(functools.partial(run_model, candidate, batch), device, repeats, warmup)
        rates[name] = 1.0 / statistics.median(seconds)
    rates["compile_seconds"] = compile_seconds
    return rates


def resolve(args: argparse.Namespace) -> tuple[torch.device, list[Setting]]:
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device")
    dtypes = args.dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    formats = args.formats or (["channels-last"] if device.type == "cuda" else ["contiguous", "channels-last"])
    settings = [
        Setting(device, DTYPES[dtype], memory_format == "channels-last")
        for dtype in dtypes
        for memory_format in formats
    ]
    return device, settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(DTYPES),
        help="float32, or autocast to bfloat16/float16 (default: float32 on the CPU, float32 and bfloat16 on CUDA)",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=["contiguous", "channels-last"],
        help="memory formats (default: both on the CPU, channels-last on CUDA)",
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["vgg16", "mobilenetv2"],
        choices=["vgg16", "mobilenetv2", "resnet50", "shufflenetv2"],
    )
    parser.add_argument(
        "--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="images per forward pass to try"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--views", type=int, default=64, help="crops per image in a training step")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=352)
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        choices=["inductor", "aot_eager"],
        help="torch.compile backend of the comparison (aot_eager: a quick check of the capture)",
    )
    parser.add_argument(
        "--only",
        choices=["compile", "epoch"],
        help="run one section alone: the torch.compile comparison, or the training epoch",
    )
    parser.add_argument(
        "--epoch-images",
        type=int,
        default=GAICD_TRAIN_IMAGES,
        help=f"images of the timed training epoch (default: GAICD's {GAICD_TRAIN_IMAGES})",
    )
    parser.add_argument("--epoch-warmup", type=int, default=8, help="images of each of the two warm-up epochs")
    parser.add_argument("--epoch-workers", type=int, default=4, help="DataLoader workers of the training epoch")
    parser.add_argument(
        "--epoch-budget-s",
        type=float,
        default=None,
        help="time fewer images when the warm-up predicts a longer epoch, and extrapolate",
    )
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    for name in ("repeats", "threads", "views", "height", "width", "epoch_images", "epoch_warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    if args.warmup < 0 or args.epoch_workers < 0:
        parser.error(f"--warmup and --epoch-workers must be >= 0, got {args.warmup} and {args.epoch_workers}")
    if args.epoch_budget_s is not None and not args.epoch_budget_s > 0:
        parser.error(f"--epoch-budget-s must be > 0, got {args.epoch_budget_s}")
    return args


def inference_sections(args: argparse.Namespace, settings: list[Setting]) -> dict[str, list[dict]]:
    """Inference rates, time split and training step per setting; the physical limit; the content
    features' two formulations. Prints their tables; returns their rows."""
    batch_sizes = sorted(set([1] + args.batch_sizes))
    print(
        "\n| backbone | setting | batch 1 (images/s) | best batch | best (images/s) | backbone | "
        "content features | rest | train step (s) | epoch of 1,036 (s) | train peak memory (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    flops, rows, measured = {}, [], []
    for backbone in args.backbones:
        flops[backbone] = counted_flops(backbone, args.height, args.width)
        for setting in settings:
            model = build_model(backbone, setting).eval()
            rates = inference_rates(model, setting, batch_sizes, args.height, args.width, args.repeats, args.warmup)
            shares = time_split(model, setting, args.height, args.width, args.repeats, args.warmup)
            del model
            best = max(rates, key=rates.get)
            row = {
                "backbone": backbone,
                "setting": setting.label,
                "dtype": str(setting.dtype).replace("torch.", ""),
                "channels_last": setting.channels_last,
                "best_batch": best,
                "best_images_per_s": rates[best],
                "images_per_s": {str(size): rate for size, rate in rates.items()},
                "shares": shares,
            }
            train = "| - | - | - |"
            if not args.no_train:
                stats = measured_training_stats(backbone, setting, args)
                memory = f"{stats['peak'] / 2**20:.0f}"
                if setting.device.type == "cpu":
                    memory += f" (RSS; +{(stats['peak'] - stats['built']) / 2**20:.0f} over the built model)"
                train = f"| {stats['step']:.3f} | {GAICD_TRAIN_IMAGES * stats['step']:.0f} | {memory} |"
                row.update(train_step_s=stats["step"], train_peak_mb=stats["peak"] / 2**20)
            print(
                f"| {backbone} | {setting.label} | {rates[1]:.2f} | {best} | {rates[best]:.2f} | "
                f"{shares['backbone']:.0%} | {shares['content']:.0%} | {shares['rest']:.0%} {train}",
                flush=True,
            )
            rows.append(row)
            measured.append((backbone, setting, rates[best]))

    print(
        "\nPhysical limit: FLOPs per image over the measured matmul throughput (bound: backbone only; "
        "model bound: the whole forward with its 90 crops).\n"
    )
    print(
        "| backbone | setting | backbone GFLOP/image | model GFLOP/image | matmul TFLOP/s | "
        "bound (images/s) | model bound (images/s) | best measured (images/s) | share of the bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    throughput: dict[tuple[str, torch.dtype], float] = {}
    limits = []
    for backbone, setting, best_rate in measured:
        key = (str(setting.device), setting.dtype)
        if key not in throughput:
            throughput[key] = matmul_throughput(setting.device, setting.dtype, args.repeats)
        bound = throughput[key] / flops[backbone]["backbone"]
        print(
            f"| {backbone} | {setting.label} | {flops[backbone]['backbone'] / 1e9:.1f} | "
            f"{flops[backbone]['model'] / 1e9:.1f} | {throughput[key] / 1e12:.3f} | {bound:.1f} | "
            f"{throughput[key] / flops[backbone]['model']:.1f} | {best_rate:.2f} | {best_rate / bound:.0%} |"
        )
        limits.append(
            {
                "backbone": backbone,
                "setting": setting.label,
                "backbone_gflop": flops[backbone]["backbone"] / 1e9,
                "model_gflop": flops[backbone]["model"] / 1e9,
                "matmul_tflops": throughput[key] / 1e12,
                "bound_images_per_s": bound,
                "best_images_per_s": best_rate,
                "share_of_bound": best_rate / bound,
            }
        )

    print(
        "\nContent features of one image's 90 crops on the CPU, fp32 (ms): the release's formulation "
        "(both channels through every layer) and the factored box masks (the model's path).\n"
    )
    print("| backbone | release's formulation | box masks | speed-up |")
    print("|---|---|---|---|")
    content = []
    for backbone in args.backbones:
        paths = content_feature_paths(backbone, args.height, args.width, args.repeats, args.warmup)
        print(
            f"| {backbone} | {paths['release'] * 1e3:.1f} | {paths['boxes'] * 1e3:.1f} | "
            f"{paths['release'] / paths['boxes']:.1f}x |",
            flush=True,
        )
        content.append({"backbone": backbone, "release_ms": paths["release"] * 1e3, "boxes_ms": paths["boxes"] * 1e3})
    return {"inference": rows, "limits": limits, "content": content}


def compile_section(args: argparse.Namespace, device: torch.device) -> list[dict]:
    print(f"\ntorch.compile ({args.compile_backend}) against eager, batch 1, fp32, contiguous.\n")
    print(f"| backbone | eager (images/s) | {args.compile_backend} (images/s) | compile time (s) |")
    print("|---|---|---|---|")
    rows = []
    for backbone in args.backbones:
        result = compile_comparison(
            backbone, device, args.height, args.width, args.repeats, args.warmup, args.compile_backend
        )
        print(
            f"| {backbone} | {result['eager']:.2f} | {result['compiled']:.2f} | {result['compile_seconds']:.0f} |",
            flush=True,
        )
        rows.append({"backbone": backbone, "backend": args.compile_backend, **result})
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, settings = resolve(args)
    align = "compiled kernels" if roi_align.KERNELS.available and rod_align.KERNELS.available else "Python fallback"
    machine = machine_description(device)
    print(
        f"# bench_model: {date.today()}, {machine}, torch {torch.__version__}, "
        f"mkldnn {'on' if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else 'off'}, "
        f"align ops: {align}, input {args.width}x{args.height}, random-init weights"
    )
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results: dict = {
        "date": str(date.today()),
        "machine": machine,
        "torch": torch.__version__,
        "align_ops": align,
        "command": sys.argv,
    }
    if args.only is None:
        results.update(inference_sections(args, settings))
    if args.only == "compile" or (args.only is None and not args.no_compile):
        results["compile"] = compile_section(args, device)
    if args.only == "epoch":
        results["epoch"] = epoch_section(args, settings)
    print(f"\n# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        write_json_atomic(args.json, results, indent=1)


if __name__ == "__main__":
    main()
