"""What every measurement of ``bench_model.py`` shares: the settings it times (device, dtype, memory
format), the model and the batch it times them on, the timer, peak memory and the machine's name."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config_GAICD import Config  # noqa: E402
from cropping_model import HumanCentricCroppingModel  # noqa: E402
from untils.boxes import partition_masks  # noqa: E402
from untils.candidates import gaic_grid_candidates  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PERSON_BOX = (120.0, 40.0, 230.0, 250.0)  # in the 352x256 input


@dataclass(frozen=True)
class Setting:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.dtype == torch.float32 else self.dtype

    @property
    def label(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.device.type} {dtype} {'channels-last' if self.channels_last else 'contiguous'}"


def build_model(backbone: str, setting: Setting) -> HumanCentricCroppingModel:
    torch.manual_seed(0)
    model = HumanCentricCroppingModel(Config(backbone=backbone, pretrained=False), loadweights=False)
    model = model.to(setting.device)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_batch(images: int, height: int, width: int, device: torch.device, crops: int | None = None) -> dict:
    """``images`` random images with the GAIC grid (or its first ``crops``) and one person each."""
    boxes = gaic_grid_candidates(width, height)[:crops]
    generator = torch.Generator().manual_seed(images)
    human_box = torch.tensor(PERSON_BOX).view(1, 1, 4).repeat(images, 1, 1)
    batch = {
        "image": torch.randn(images, 3, height, width, generator=generator),
        "crop_box": boxes.unsqueeze(0).repeat(images, 1, 1),
        "human_box": human_box,
        "partition_mask": partition_masks(human_box, width, height),
        "crop_valid": torch.ones(images, len(boxes), dtype=torch.bool),
    }
    return {key: value.to(device) for key, value in batch.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones (CUDA events on CUDA)."""
    for _ in range(warmup):
        call()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000.0)
        else:
            begin = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - begin)
    return seconds


def resident_bytes(device: torch.device) -> float:
    """Peak memory so far: CUDA's allocated bytes, or this process's peak resident set size.

    On Linux the peak RSS is VmHWM: getrusage's ru_maxrss would carry the parent's peak into a
    spawned child (it survives fork and exec).
    """
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as stream:
            line = next(line for line in stream if line.startswith("VmHWM:"))
        return float(line.split()[1]) * 1024.0  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux, bytes on macOS


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            model_name = next(line.split(":", 1)[1].strip() for line in stream if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model_name}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"
