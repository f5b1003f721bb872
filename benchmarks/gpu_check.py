"""The GPU path checked and timed in one command, for the rare session that has a CUDA machine.

  python benchmarks/gpu_check.py --report gpu_report.md                 # CUDA machine: about 8 minutes
  python benchmarks/gpu_check.py --report dry.md --cpu-dry-run          # the same stages, tiny, on the CPU

Stages, each command with its own time budget, all inside ``--budget-s`` (default 480 s):

1. build: ``FORCE_CUDA=1 python setup.py build_ext --inplace -j 2`` with the installed torch and nvcc
   (CUDA_HOME from the environment, torch's own search or the nvcc on PATH; TORCH_CUDA_ARCH_LIST
   set to this GPU's compute capability; no pip, no network), then a fresh process checks that both
   ops have CPU and CUDA kernels. The dry run builds nothing (the CPU build alone takes over a
   minute on 2 cores, and other processes may be using the kernels in place): it checks the ones
   already built.
2. tests: pytest on ``tests/test_align_cuda.py`` and ``tests/test_models_cuda.py`` (their cases
   marked ``cuda``; the dry run runs the others, the same tests on the CPU with tiny sizes), one row
   per test with the errors it measured.
3. benchmarks: ``bench_align.py``; ``bench_model.py`` (vgg16 and mobilenetv2, fp32 and bf16,
   channels-last, a batch sweep, a training step, the FLOP bound); one GAICD-sized
   training epoch through the real training loop (``bench_model.py --only epoch``, vgg16, fp32 and
   bf16: fewer images are timed when the budget needs it, and extrapolated, as the report says);
   ``crop.py`` on a folder with four aspect ratios against one (``bench_crop.py``, vgg16 and
   mobilenetv2, dense and fast candidates: issue 24's 1.3x); the web app's latency and throughput
   with the model on the GPU (``bench_app.py``); ``torch.compile`` against eager. The dry run uses
   tiny sizes.
4. report: one Markdown file at ``--report``: the machine, torch, CUDA, every number, pass/fail per
   check, the issue's targets, and the time each stage took. It is rewritten atomically after every
   command, so a stage that fails or runs out of time still leaves a whole report.

Every command runs in a child process in a session of its own, killed with its children when its
budget is spent. Exit status: 0 when every check passed or was skipped; 1 when one failed, or when
the build, the kernel check or the tests ran out of time or were not run for lack of budget (a
benchmark that runs out of time leaves its targets "not measured" without failing the run); 2 on
bad arguments, or without CUDA and without ``--cpu-dry-run`` (then nothing is written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from gpu_targets import target_rows  # noqa: E402

from untils.atomic import write_text_atomic  # noqa: E402

STAGES = ("1. build", "2. tests", "3. benchmarks", "4. report")
FAILING = ("fail", "timeout", "not run")
REPORT_RESERVE_S = 3.0  # kept back to stop a child and write the report
MIN_STEP_S = 3.0  # a command is not started with less
TEST_FILES = ("tests/test_align_cuda.py", "tests/test_models_cuda.py")

PROBE = """
import json, os, platform, sys
import torch
from torch.utils.cpp_extension import CUDA_HOME
info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(), "cuda_home": CUDA_HOME}
if info["cuda_available"]:
    properties = torch.cuda.get_device_properties(0)
    info.update(device=properties.name, capability=f"{properties.major}.{properties.minor}",
                memory_gib=round(properties.total_memory / 2**30, 1), multiprocessors=properties.multi_processor_count,
                device_count=torch.cuda.device_count())
print(json.dumps(info))
"""
KERNEL_CHECK = """
import sys, torch, roi_align, rod_align
keys = sys.argv[1:]
missing = [f"{name}_align::{name}_align ({key})" for name in ("roi", "rod") for key in keys
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"{name}_align::{name}_align", key)]
print("loaded from", roi_align.__file__, rod_align.__file__)
sys.exit(f"no kernel for {', '.join(missing)}" if missing else 0)
"""


class UsageError(Exception):
    """The machine cannot do what was asked (CUDA checks without CUDA)."""


@dataclass
class Check:
    stage: str
    name: str
    status: str  # pass, fail, skip, timeout, not run
    seconds: float = 0.0
    detail: str = ""
    required: bool = True  # a timeout or "not run" fails the run (benchmarks: only a failure does)

    @property
    def failed(self) -> bool:
        return self.status == "fail" or (self.required and self.status in FAILING)


@dataclass
class CommandResult:
    returncode: int | None  # None: killed at its budget
    seconds: float
    output: str


@dataclass
class Run:
    """Everything the report shows, filled in as the stages go."""

    mode: str
    command: str
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    started_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    environment: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    stage_budgets: dict[str, float] = field(default_factory=dict)
    sections: dict[str, list[str]] = field(default_factory=lambda: {stage: [] for stage in STAGES})
    bench_results: dict[str, dict] = field(default_factory=dict)
    finished: bool = False

    @property
    def failed(self) -> bool:
        return any(check.failed for check in self.checks)


# ----- child processes --------------------------------------------------------------------------


def run_command(command: list[str], timeout_s: float, log_path: Path, env: dict | None = None) -> CommandResult:
    """Run ``command`` from the repository root, output to ``log_path``; past ``timeout_s`` it and
    every process of its session are stopped (SIGTERM, then SIGKILL)."""
    environment = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    begin = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except BaseException:  # the budget, or this script being stopped: the children go too
            stop_session(process)
            returncode = None
            if sys.exc_info()[0] is not subprocess.TimeoutExpired:
                raise
    return CommandResult(returncode, time.monotonic() - begin, log_path.read_text(errors="replace"))


def stop_session(process: subprocess.Popen) -> None:
    """SIGTERM to the command's session, SIGKILL after 5 s; returns once every process of it is gone
    (a child still exiting would hold the GPU memory the next stage needs)."""
    for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if process.poll() is not None and not session_alive(process.pid):
                return
            time.sleep(0.05)


def session_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def fenced(text: str) -> list[str]:
    return ["```", text.replace("```", "'''"), "```"]


# ----- stage 1: build ---------------------------------------------------------------------------


def find_cuda_home(torch_cuda_home: str | None) -> str | None:
    """$CUDA_HOME or $CUDA_PATH, torch's own answer, or the folder above the nvcc on PATH."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), torch_cuda_home):
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            return candidate
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def last_line_of(command: list[str]) -> str:
    """The last line of a tool's version output ('' when it is missing or fails)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout.strip().splitlines() or [""])[-1]


# ----- stage 2: tests ---------------------------------------------------------------------------


def junit_rows(path: Path) -> list[dict]:
    """One dict per test case of a pytest JUnit XML file: id, status, seconds, message, properties."""
    rows = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        status, message = "pass", ""
        for tag, name in (("failure", "fail"), ("error", "fail"), ("skipped", "skip")):
            element = case.find(tag)
            if element is not None:
                status, message = name, ((element.get("message") or tag).splitlines() or [tag])[0]
                break
        properties = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        module = case.get("classname", "").rsplit(".", 1)[-1]
        rows.append(
            {
                "id": f"{module}::{case.get('name')}",
                "status": status,
                "seconds": float(case.get("time", 0)),
                "message": message,
                "properties": properties,
            }
        )
    return rows


# ----- the targets ----------------------------------------------------------------------


# ----- the report -------------------------------------------------------------------------------


def render(run: Run) -> str:
    elapsed = time.monotonic() - run.started
    status = "running" if not run.finished else ("FAIL" if run.failed else "PASS")
    lines = [
        "# GPU check report",
        "",
        f"- mode: {run.mode}",
        f"- command: `{run.command}`",
        f"- started: {run.started_utc}",
        f"- result: **{status}** after {elapsed:.0f} s of a {run.budget_s:.0f} s budget",
        "",
    ]
    if run.mode != "CUDA":
        lines += ["**A CPU dry run: tiny sizes on the CPU. None of its numbers is a GPU number.**", ""]
    lines += ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in run.environment.items()]
    lines += [
        "",
        "## Stages",
        "",
        "A stage's budget is the sum of its commands' caps; every command also stops when the run's budget is spent.",
        "",
        "| stage | budget (s) | took (s) | result |",
        "|---|---:|---:|---|",
    ]
    for stage in STAGES:
        checks = [check for check in run.checks if check.stage == stage]
        worst = next((state for state in (*FAILING, "pass", "skip") if any(c.status == state for c in checks)), "-")
        took = sum(check.seconds for check in checks)
        lines.append(f"| {stage} | {run.stage_budgets.get(stage, 0):.0f} | {took:.1f} | {worst} |")
    lines += ["", "## Checks", "", "| stage | check | result | seconds | detail |", "|---|---|---|---:|---|"]
    for check in run.checks:
        detail = check.detail.replace("|", "/").replace("\n", " ")
        lines.append(f"| {check.stage} | {check.name} | {check.status} | {check.seconds:.1f} | {detail} |")
    lines += ["", "## Targets", "", "| target | goal | measured | verdict |", "|---|---|---|---|"]
    try:
        lines += [f"| {' | '.join(row)} |" for row in target_rows(run.bench_results, run.mode != "CUDA")]
    except (KeyError, TypeError, ValueError) as error:  # whatever a benchmark wrote, the report is written
        lines.append(f"| the benchmarks' JSON could not be read: {type(error).__name__} {error} | | | |")
    for stage in STAGES:
        if run.sections[stage]:
            lines += ["", f"## {stage}", "", *run.sections[stage]]
    return "\n".join(lines) + "\n"


class GPUCheck:
    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args, self.work_dir = args, work_dir
        self.dry_run = args.cpu_dry_run
        mode = "CPU dry run" if self.dry_run else "CUDA"
        self.run = Run(mode, shlex.join([sys.executable, *sys.argv]), args.budget_s)
        self.deadline = self.run.started + args.budget_s - REPORT_RESERVE_S
        self.build_env: dict[str, str] = {}

    def write_report(self) -> None:
        write_text_atomic(str(self.args.report), render(self.run))

    def step(
        self, stage: str, name: str, command: list[str], cap_s: float, env: dict | None = None, required: bool = True
    ) -> CommandResult | None:
        """Run one command of a stage within its cap and what is left of the budget; record a check."""
        self.run.stage_budgets[stage] = self.run.stage_budgets.get(stage, 0) + cap_s
        timeout = min(cap_s, self.deadline - time.monotonic())
        if timeout < MIN_STEP_S:
            self.run.checks.append(Check(stage, name, "not run", 0.0, "the budget was spent", required))
            self.write_report()
            return None
        log = self.work_dir / f"{len(self.run.checks):02d}.log"
        result = run_command(command, timeout, log, env)
        if result.returncode is None:
            check = Check(stage, name, "timeout", result.seconds, f"stopped after {timeout:.0f} s", required)
        else:
            check = Check(
                stage,
                name,
                "pass" if result.returncode == 0 else "fail",
                result.seconds,
                "" if result.returncode == 0 else f"exit status {result.returncode}",
                required,
            )
        self.run.checks.append(check)
        if check.status != "pass":
            self.run.sections[stage] += [f"### {name}: {check.status}", "", *fenced(tail(result.output)), ""]
        return result

    # ----- stages -------------------------------------------------------------------------------
    def environment(self) -> None:
        stage = STAGES[0]
        result = self.step(stage, "torch and device probe", [sys.executable, "-c", PROBE], 60)
        info = {}
        if result is not None and result.returncode == 0:
            # the probe's JSON line; warnings may share its output
            info = json.loads(
                next((line for line in reversed(result.output.splitlines()) if line.startswith("{")), "{}")
            )
        if not self.dry_run and info and not info["cuda_available"]:
            raise UsageError(f"torch {info['torch']} sees no CUDA device here: run with --cpu-dry-run")
        cuda_home = find_cuda_home(info.get("cuda_home"))
        nvcc = str(Path(cuda_home) / "bin" / "nvcc") if cuda_home else "nvcc"
        if not self.dry_run:
            self.build_env = {
                "FORCE_CUDA": "1",
                "MAX_JOBS": str(os.cpu_count() or 1),
                **({"TORCH_CUDA_ARCH_LIST": info["capability"]} if info.get("capability") else {}),
                **({"CUDA_HOME": cuda_home} if cuda_home else {}),
            }
        device = (
            f"{info['device']} (compute capability {info['capability']}, {info['memory_gib']} GiB, "
            f"{info['multiprocessors']} multiprocessors; {info['device_count']} visible)"
            if info.get("device")
            else "none (CPU)"
        )
        self.run.environment = {
            "device": device,
            "torch": f"{info.get('torch', '?')} (CUDA {info.get('torch_cuda')}, cuDNN {info.get('cudnn')})",
            "nvcc": last_line_of([nvcc, "--version"]) or "not found",
            "CUDA_HOME": cuda_home or "not found",
            "driver": last_line_of(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"])
            or "nvidia-smi not found",
            "Python": f"{info.get('python', platform.python_version())} ({sys.executable})",
            "host": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        }
        self.write_report()

    def build(self) -> None:
        stage = STAGES[0]
        # -j 2: both extensions at once (each one's sources already compile in parallel under ninja)
        command = [sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"]
        if self.dry_run:
            self.run.checks.append(
                Check(
                    stage,
                    "build the kernels in place",
                    "skip",
                    0.0,
                    f"dry run; a CUDA machine runs FORCE_CUDA=1 {shlex.join(command[1:])}",
                )
            )
        else:
            env_text = " ".join(f"{key}={value}" for key, value in self.build_env.items())
            self.run.sections[stage] += [f"Build command: `{env_text} {shlex.join(command)}`", ""]
            self.step(stage, "build the kernels in place", command, 240, self.build_env)
        keys = ["CPU"] if self.dry_run else ["CPU", "CUDA"]
        self.step(stage, f"kernels load ({', '.join(keys)})", [sys.executable, "-c", KERNEL_CHECK, *keys], 60)
        self.write_report()

    def tests(self) -> None:
        stage = STAGES[1]
        junit = self.work_dir / "tests.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            f"--junitxml={junit}",
            *TEST_FILES,
            "-m",
            "not cuda" if self.dry_run else "cuda",
        ]
        result = self.step(stage, "pytest " + " ".join(TEST_FILES), command, 170 if not self.dry_run else 150)
        if result is None or not junit.exists():
            return
        rows = junit_rows(junit)
        self.run.sections[stage] += ["| test | result | seconds | measured |", "|---|---|---:|---|"]
        for row in rows:
            measured = ", ".join(f"{key} {value}" for key, value in row["properties"].items()) or row["message"]
            self.run.sections[stage].append(
                f"| {row['id']} | {row['status']} | {row['seconds']:.1f} | {measured.replace('|', '/')} |"
            )
            if row["status"] == "fail":
                self.run.checks.append(Check(stage, row["id"], "fail", row["seconds"], row["message"]))
        counts = {state: sum(row["status"] == state for row in rows) for state in ("pass", "fail", "skip")}
        self.run.sections[stage] += ["", ", ".join(f"{count} {state}" for state, count in counts.items()), ""]
        self.write_report()

    def benchmark(self, name: str, script: str, arguments: list[str], cap_s: float) -> None:
        stage = STAGES[2]
        output = self.work_dir / f"{name}.json"
        command = [sys.executable, f"benchmarks/{script}", *arguments, "--json", str(output)]
        quiet = {"TQDM_DISABLE": "1"}  # crop.py's progress bars would fill the report
        result = self.step(stage, f"{script} {' '.join(arguments)}", command, cap_s, quiet, required=False)
        if result is not None and result.returncode == 0:
            self.run.sections[stage] += [
                f"### {name}",
                "",
                f"`{shlex.join(command[1:-2])}`",
                "",
                *result.output.splitlines()[1:],
                "",
            ]
        if output.exists():
            self.run.bench_results[name] = json.loads(output.read_text())
        self.write_report()

    def benchmarks(self) -> None:
        if self.dry_run:
            tiny = [
                "--device",
                "cpu",
                "--backbones",
                "mobilenetv2",
                "--dtypes",
                "float32",
                "--formats",
                "contiguous",
                "--height",
                "64",
                "--width",
                "96",
                "--views",
                "8",
                "--repeats",
                "1",
                "--warmup",
                "0",
            ]
            self.benchmark(
                "align",
                "bench_align.py",
                ["--device", "cpu", "--shapes", "gaicd", "--rounds", "1", "--warmup", "1", "--min-time", "0.005"],
                40,
            )
            self.benchmark("model", "bench_model.py", [*tiny, "--batch-sizes", "2", "--no-compile"], 60)
            self.benchmark(
                "epoch",
                "bench_model.py",
                [*tiny, "--only", "epoch", "--epoch-images", "2", "--epoch-warmup", "1", "--epoch-workers", "1"],
                40,
            )
            self.benchmark(
                "crop",
                "bench_crop.py",
                [
                    *("--device", "cpu", "--backbones", "mobilenetv2", "--photos", "2", "--size", "320x240"),
                    *("--num-workers", "0", "--compare-ratios", "any", "1:1", "--ratio-candidates", "dense", "fast"),
                ],
                60,
            )
            self.benchmark(
                "app",
                "bench_app.py",
                ["--device", "cpu", "--photos", "2", "--size", "320x240", "--clients", "2", "--latency-runs", "1"],
                60,
            )
            self.benchmark(
                "compile", "bench_model.py", [*tiny, "--only", "compile", "--compile-backend", "aot_eager"], 40
            )
            return
        self.benchmark("align", "bench_align.py", ["--device", "cuda"], 75)
        self.benchmark(
            "model",
            "bench_model.py",
            [
                "--device",
                "cuda",
                "--backbones",
                "vgg16",
                "mobilenetv2",
                "--dtypes",
                "float32",
                "bfloat16",
                "--formats",
                "channels-last",
                "--batch-sizes",
                "1",
                "8",
                "32",
                "128",
                "--no-compile",
            ],
            120,
        )
        epoch_cap = 100
        per_setting = max(5.0, (min(epoch_cap, self.deadline - time.monotonic()) - 40) / 2)
        self.benchmark(
            "epoch",
            "bench_model.py",
            [
                "--device",
                "cuda",
                "--backbones",
                "vgg16",
                "--dtypes",
                "float32",
                "bfloat16",
                "--formats",
                "channels-last",
                "--only",
                "epoch",
                "--epoch-budget-s",
                f"{per_setting:.0f}",
            ],
            epoch_cap,
        )
        self.benchmark(
            "crop",
            "bench_crop.py",
            [
                *("--device", "cuda", "--photos", "24", "--vgg16-photos", "24", "--num-workers", "4", "--warmup", "1"),
                *("--compare-ratios", "any", "1:1", "16:9", "9:16", "--ratio-candidates", "dense", "fast"),
            ],
            75,
        )
        self.benchmark("app", "bench_app.py", ["--device", "cuda", "--photos", "32", "--latency-runs", "10"], 50)
        # vgg16 only: its eval graph at this size is the one tests/test_models_cuda.py compiled already
        self.benchmark(
            "compile", "bench_model.py", ["--device", "cuda", "--backbones", "vgg16", "--only", "compile"], 60
        )

    def execute(self) -> None:
        """Stages 1-3 (after :meth:`environment`), then the final report, also when one is interrupted."""
        try:
            self.build()
            self.tests()
            self.benchmarks()
        except BaseException as error:
            self.run.checks.append(Check(STAGES[3], "run interrupted", "fail", 0.0, f"{type(error).__name__}: {error}"))
            raise
        finally:
            begin = time.monotonic()
            self.run.finished = True
            self.run.stage_budgets[STAGES[3]] = REPORT_RESERVE_S
            self.run.checks.append(Check(STAGES[3], f"report written to {self.args.report}", "pass"))
            self.write_report()
            self.run.checks[-1].seconds = time.monotonic() - begin
            self.write_report()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, required=True, help="the Markdown report to write")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same stages with tiny sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for everything (default: 480)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    args = parser.parse_args(argv)
    if not args.budget_s >= 2 * REPORT_RESERVE_S:
        parser.error(f"--budget-s must be at least {2 * REPORT_RESERVE_S:.0f}, got {args.budget_s}")
    if not args.report.parent.resolve().is_dir():
        parser.error(f"--report {args.report}: folder {args.report.parent} does not exist")
    if args.report.exists() and not args.overwrite:
        parser.error(f"--report {args.report} exists; pass --overwrite to replace it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work_dir:
        check = GPUCheck(args, Path(work_dir))
        try:
            check.environment()
        except UsageError as error:
            print(f"gpu_check.py: error: {error}", file=sys.stderr)
            return 2
        check.execute()
    print(f"{'FAIL' if check.run.failed else 'PASS'}: report in {args.report}")
    return 1 if check.run.failed else 0


if __name__ == "__main__":
    # a stopped run (SIGTERM) still stops its child and writes its report
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))
    sys.exit(main())
