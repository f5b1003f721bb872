"""RoIAlign / RoDAlign: compiled kernels against the pure-PyTorch fallback.

  python benchmarks/bench_align.py                      # CPU, both shapes
  python benchmarks/bench_align.py --device cuda --repeats 100
  python benchmarks/bench_align.py --shapes gaicd --threads 1

Times ``RoIAlignAvg(9, 9, 1/16)`` and ``RoDAlignAvg(9, 9, 1/16)`` (the modules the cropping
model uses, 2x2 average pooling included), alone and together ("both"), forward only (under
no_grad) and forward+backward (gradient of the features), for two shapes:

  gaicd: features 1x32x16x24 (a 256x384 image at 1/16), 90 crops, as in GAICD training;
  large: features 8x32x64x64 (1024x1024 images), 4096 crops spread over the batch.

Crops are random (seeded) boxes covering at least a third of the image each way. Each
measurement is the median over ``--rounds`` rounds of the mean time of N calls, after
``--warmup`` calls; N is ``--repeats``, or by default as many calls as fill ``--min-time``
seconds (timed once first). On CUDA the rounds are timed with CUDA events, and the large
shape's forward+backward also reports achieved memory bandwidth against the compulsory
traffic (stated in the output) and as a share of the device's measured memory bandwidth (a
device-to-device copy of 1 GiB, bytes read and written). ``--json PATH`` also writes every number
as JSON (for ``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rod_align  # noqa: E402
import roi_align  # noqa: E402
from rod_align import RoDAlignAvg  # noqa: E402
from roi_align import RoIAlignAvg  # noqa: E402
from untils.atomic import write_json_atomic  # noqa: E402

ALIGNED_SIZE = 9
SPATIAL_SCALE = 1 / 16
SHAPES = {
    "gaicd": {"features": (1, 32, 16, 24), "rois": 90},
    "large": {"features": (8, 32, 64, 64), "rois": 4096},
}
OPS = ("roi", "rod", "both")
PASSES = ("forward", "forward+backward")


def random_crops(
    count: int, batch_size: int, image_height: float, image_width: float, generator: torch.Generator
) -> torch.Tensor:
    u = torch.rand(count, 4, generator=generator)
    x1, y1 = u[:, 0] * image_width / 3, u[:, 1] * image_height / 3
    x2 = image_width * (2 + u[:, 2]) / 3
    y2 = image_height * (2 + u[:, 3]) / 3
    batch_index = (torch.arange(count) % batch_size).float()
    return torch.stack((batch_index, x1, y1, x2, y2), dim=1)


def make_inputs(shape: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch_size, channels, height, width = SHAPES[shape]["features"]
    features = torch.randn(batch_size, channels, height, width, generator=generator)
    rois = random_crops(SHAPES[shape]["rois"], batch_size, height / SPATIAL_SCALE, width / SPATIAL_SCALE, generator)
    return features.to(device), rois.to(device)


def make_step(op: str, backward: bool, backend: str, features: torch.Tensor, rois: torch.Tensor) -> Callable[[], None]:
    modules = []
    if op in ("roi", "both"):
        modules.append(RoIAlignAvg(ALIGNED_SIZE, ALIGNED_SIZE, SPATIAL_SCALE, backend=backend))
    if op in ("rod", "both"):
        modules.append(RoDAlignAvg(ALIGNED_SIZE, ALIGNED_SIZE, SPATIAL_SCALE, backend=backend))
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                for module in modules:
                    module(features, rois)

        return forward

    leaf = features.detach().requires_grad_(True)
    out_shape = (rois.shape[0], features.shape[1], ALIGNED_SIZE, ALIGNED_SIZE)
    grads = [torch.randn(out_shape, device=features.device) for _ in modules]

    def forward_backward() -> None:
        outputs = [module(leaf, rois) for module in modules]
        torch.autograd.backward(outputs, grads)
        leaf.grad = None

    return forward_backward


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(
    step: Callable[[], None], device: torch.device, warmup: int, repeats: int | None, rounds: int, min_time: float
) -> tuple[float, int]:
    """Median over rounds of the mean milliseconds per call, and the calls per round."""
    for _ in range(warmup):
        step()
    if repeats is None:
        synchronize(device)
        begin = time.perf_counter()
        step()
        synchronize(device)
        repeats = max(1, round(min_time / max(time.perf_counter() - begin, 1e-6)))
    samples = []
    for _ in range(rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                step()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end) / repeats)
        else:
            begin = time.perf_counter()
            for _ in range(repeats):
                step()
            samples.append((time.perf_counter() - begin) * 1e3 / repeats)
    return statistics.median(samples), repeats


def compulsory_bytes(shape: str, op: str) -> int:
    """Bytes forward+backward must move at least, per op: read the features and write the
    output (forward); read the output gradient, zero-fill and write the feature gradient
    (backward); the RoIs once each way. float32 throughout."""
    batch_size, channels, height, width = SHAPES[shape]["features"]
    count = SHAPES[shape]["rois"]
    feature_bytes = 4 * batch_size * channels * height * width
    output_bytes = 4 * count * channels * ALIGNED_SIZE * ALIGNED_SIZE
    roi_bytes = 4 * count * 5
    per_op = feature_bytes + output_bytes + output_bytes + 2 * feature_bytes + 2 * roi_bytes
    return per_op * (2 if op == "both" else 1)


def copy_bandwidth(device: torch.device, rounds: int) -> float:
    """Bytes per second of a device-to-device copy of 1 GiB (bytes read plus bytes written), the
    best of ``rounds`` timed copies after one untimed one."""
    source = torch.empty(2**28, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    seconds = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize(device)
        seconds.append(start.elapsed_time(end) / 1e3)
    return 2 * source.numel() * source.element_size() / min(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument(
        "--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES), help="shapes to time (default: all)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="calls per round (default: enough to fill --min-time)"
    )
    parser.add_argument(
        "--min-time", type=float, default=0.25, help="seconds per round when --repeats is not given (default: 0.25)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    if not (roi_align.KERNELS.available and rod_align.KERNELS.available):
        parser.error("compiled kernels not built: run `pip install --no-build-isolation -e .`")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    hardware = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    )
    print(f"# bench_align on {device} ({hardware}), torch {torch.__version__}, {date.today()}")
    print(f"# {' '.join(sys.argv)}")
    calls = args.repeats or f"as many calls as fill {args.min_time} s (shown as n)"
    print(
        f"# RoIAlignAvg/RoDAlignAvg({ALIGNED_SIZE}, {ALIGNED_SIZE}, 1/16), float32; "
        f"median of {args.rounds} rounds of {calls}"
    )
    print()
    print("| shape | op | pass | compiled (ms) | fallback (ms) | speed-up |")
    print("|---|---|---|---:|---:|---:|")
    rows, bandwidths = [], []
    for shape in args.shapes:
        features, rois = make_inputs(shape, device)
        for op in OPS:
            for pass_name in PASSES:
                backward = pass_name == "forward+backward"
                timing = (args.warmup, args.repeats, args.rounds, args.min_time)
                compiled, compiled_calls = time_ms(make_step(op, backward, "compiled", features, rois), device, *timing)
                fallback, fallback_calls = time_ms(make_step(op, backward, "python", features, rois), device, *timing)
                print(
                    f"| {shape} | {op} | {pass_name} | {compiled:.3f} (n={compiled_calls}) "
                    f"| {fallback:.3f} (n={fallback_calls}) | {fallback / compiled:.1f}x |",
                    flush=True,
                )
                rows.append(
                    {"shape": shape, "op": op, "pass": pass_name, "compiled_ms": compiled, "fallback_ms": fallback}
                )
                if device.type == "cuda" and shape == "large" and backward:
                    bandwidths.append(
                        {"op": op, "compulsory_bytes": compulsory_bytes(shape, op), "compiled_ms": compiled}
                    )
    results = {
        "date": str(date.today()),
        "device": str(device),
        "hardware": hardware,
        "torch": torch.__version__,
        "command": sys.argv,
        "rows": rows,
        "bandwidth": bandwidths,
    }
    if bandwidths:
        results["copy_bytes_per_s"] = copy_bandwidth(device, args.rounds)
        print()
        print("Achieved bandwidth; compulsory bytes per op = 3 x features (read; zero-fill and write of the")
        print("gradient) + 2 x output (write; gradient read) + 2 x RoIs, float32; share of a 1 GiB device copy's")
        print(f"{results['copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write):")
        for entry in bandwidths:
            achieved = entry["compulsory_bytes"] / (entry["compiled_ms"] / 1e3)
            entry["share_of_copy"] = achieved / results["copy_bytes_per_s"]
            print(
                f"large {entry['op']} forward+backward: {entry['compulsory_bytes'] / 1e6:.1f} MB compulsory traffic "
                f"in {entry['compiled_ms']:.3f} ms = {achieved / 1e9:.1f} GB/s (compiled), "
                f"{entry['share_of_copy']:.0%} of the copy's"
            )
    if args.json:
        write_json_atomic(args.json, results, indent=1)


if __name__ == "__main__":
    main()
