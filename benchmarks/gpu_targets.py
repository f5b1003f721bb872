"""The targets gpu_check.py's report checks, read from the benchmarks' JSON: issue 14's and 27's
(kernels, inference, training epoch on the GPU), issue 24's (four aspect ratios at most 1.3x one)
and the web app's crop latency."""

from __future__ import annotations

from collections.abc import Callable

Verdict = Callable[[float | None, Callable[[float], bool]], str]


def target_rows(results: dict[str, dict], dry_run: bool) -> list[tuple[str, str, str, str]]:
    """(target, goal, measured, verdict) for each target the benchmarks measure."""
    align, model, epoch = results.get("align", {}), results.get("model", {}), results.get("epoch", {})
    rows = []

    def verdict(value: float | None, passes: Callable[[float], bool]) -> str:
        if dry_run:
            return "n/a (CPU dry run)"
        return "not measured" if value is None else ("met" if passes(value) else "NOT met")

    both = next((entry for entry in align.get("bandwidth", []) if entry["op"] == "both"), None)
    share = both and both.get("share_of_copy")
    rows.append(
        (
            "RoI+RoD large shape, forward+backward",
            ">= 50% of a 1 GiB device copy's bandwidth",
            "-" if share is None else f"{share:.0%} ({both['compulsory_bytes'] / 1e6:.0f} MB compulsory)",
            verdict(share, lambda value: value >= 0.5),
        )
    )
    for backbone, goal in (("vgg16", 3000.0), ("mobilenetv2", 5000.0)):
        row = next(
            (
                row
                for row in model.get("inference", [])
                if row["backbone"] == backbone and row["dtype"] == "bfloat16" and row["channels_last"]
            ),
            None,
        )
        rate = row and row["best_images_per_s"]
        rows.append(
            (
                f"{backbone} bf16 channels-last inference, 90 crops per 256x352 image",
                f">= {goal:,.0f} images/s",
                "-" if rate is None else f"{rate:,.0f} images/s (batch {row['best_batch']})",
                verdict(rate, lambda value, goal=goal: value >= goal),
            )
        )
    rates = {
        row["backbone"]: row["best_images_per_s"] for row in model.get("inference", []) if row["dtype"] == "bfloat16"
    }
    rows.append(
        (
            "against GAIC's own model: 125-200 images/s on a GTX 1080 Ti (its paper)",
            "for comparison",
            ", ".join(f"{name} {rate / 200:.1f}-{rate / 125:.1f}x" for name, rate in rates.items()) or "-",
            "n/a (CPU dry run)" if dry_run else "for comparison",
        )
    )
    limit = next(
        (
            row
            for row in model.get("limits", [])
            if row["backbone"] == "vgg16" and "bfloat16 channels-last" in row["setting"]
        ),
        None,
    )
    share = limit and limit["share_of_bound"]
    rows.append(
        (
            "vgg16 bf16: backbone FLOPs at the measured bf16 matmul throughput",
            ">= 25%",
            "-"
            if share is None
            else f"{share:.0%} of {limit['matmul_tflops']:.0f} TFLOP/s ({limit['backbone_gflop']:.1f} GFLOP/image)",
            verdict(share, lambda value: value >= 0.25),
        )
    )
    for row in epoch.get("epoch", []) or [None]:
        label = "" if row is None else f", {row['backbone']}, {row['setting']}"
        seconds = row and row["gaicd_epoch_seconds"]
        measured = (
            "-"
            if row is None
            else (
                f"{seconds:.1f} s ({row['images']} images timed{'' if row['images'] == 1036 else ', extrapolated'}), "
                f"peak memory {row['peak_memory_mb']:,.0f} MB"
            )
        )
        rows.append(
            (
                f"GAICD epoch, batch 1, 64 views (vgg16: the paper's recipe){label}",
                "<= 15 s",
                measured,
                verdict(seconds, lambda value: value <= 15),
            )
        )
        syncs = None if row is None else row.get("syncs_per_step")
        count = None if syncs is None else sum(syncs.values())
        sites = "-" if syncs is None else ", ".join(f"{line} x{number}" for line, number in syncs.items()) or "none"
        rows.append(
            (
                f"host-device synchronisations per training step{label}",
                "0 (.item() only when logging)",
                sites if count is None else f"{count}: {sites}",
                verdict(count, lambda value: value == 0),
            )
        )
    rows += crop_rows(results.get("crop", {}), verdict)
    rows += app_rows(results.get("app", {}), dry_run)
    return rows


def crop_rows(crop: dict, verdict: Verdict) -> list[tuple[str, str, str, str]]:
    """crop.py on a folder, every aspect ratio at once against the first alone (bench_crop.py)."""
    rows = []
    for run in crop.get("runs", []):
        if "versus_one" not in run:
            continue
        seconds = run["total_s"] / run["photos"]
        rows.append(
            (
                f"crop.py, aspect ratios {run['ratios']} at once against the first alone, {run['backbone']}, "
                f"{run['ratio_candidates']} candidates",
                "<= 1.3x (issue 24)",
                f"{run['versus_one']:.2f}x ({seconds * 1000:.0f} ms a photo, {run['photos']} photos)",
                verdict(run["versus_one"], lambda value: value <= 1.3),
            )
        )
    return rows or [("crop.py, several aspect ratios against one (issue 24)", "<= 1.3x", "-", verdict(None, bool))]


def app_rows(app: dict, dry_run: bool) -> list[tuple[str, str, str, str]]:
    """The web app's answer to one photo, and to several clients (bench_app.py)."""
    if "latency_median_s" not in app:
        measured = "-"
    else:
        measured = (
            f"median {app['latency_median_s'] * 1000:.0f} ms, slowest {app['latency_max_s'] * 1000:.0f} ms "
            f"of {app['latency_runs']}; {app['clients']} clients: {app['server_photos_per_s']:.1f} photos/s"
        )
    state = "n/a (CPU dry run)" if dry_run else ("not measured" if measured == "-" else "reported")
    return [
        ("web app crop latency, one photo alone (app.py, free ratio, top 3)", "reported (issue 27)", measured, state)
    ]
