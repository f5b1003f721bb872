"""benchmarks/gpu_check.py: its CPU dry run end to end, its budget, its child processes, and the
parts of its report computed from results (checked against hand-written inputs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tests.conftest import REPO_ROOT, process_alive

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


def markdown_table(report: str, heading: str) -> list[list[str]]:
    """The cells of the first table under ``heading`` (header and separator rows left out)."""
    lines = report.split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def run_script(*arguments: str, timeout: int) -> tuple[subprocess.CompletedProcess, float]:
    begin = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    return done, time.monotonic() - begin


def test_cpu_dry_run_writes_a_complete_report(tmp_path):
    report_path = tmp_path / "report.md"
    done, seconds = run_script("--report", str(report_path), "--cpu-dry-run", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.md"]  # no temporary file left
    report = report_path.read_text()
    assert report.startswith("# GPU check report\n")
    assert "- mode: CPU dry run" in report and "- result: **PASS**" in report
    assert "None of its numbers is a GPU number" in report

    environment = dict(markdown_table(report, "## Environment"))
    assert environment["device"] == "none (CPU)" and environment["torch"].startswith(torch.__version__)

    stages = markdown_table(report, "## Stages")
    assert [row[0] for row in stages] == list(gpu_check.STAGES)
    assert all(row[3] == "pass" for row in stages), stages
    assert sum(float(row[2]) for row in stages) <= seconds

    checks = {row[1]: row[2] for row in markdown_table(report, "## Checks")}
    assert checks["build the kernels in place"] == "skip"
    assert checks["kernels load (CPU)"] == "pass"
    assert checks["pytest tests/test_align_cuda.py tests/test_models_cuda.py"] == "pass"
    benchmarks = [name for name in checks if name.startswith("bench_")]
    assert len(benchmarks) == 6 and all(checks[name] == "pass" for name in benchmarks)
    assert sum(name.startswith(("bench_crop.py", "bench_app.py")) for name in benchmarks) == 2

    tests = {row[0]: row for row in markdown_table(report, "## 2. tests")}
    cpu_cases = [name for name in tests if name.startswith("test_models_cuda::") and "[cpu" in name]
    assert len(cpu_cases) == 7 and all(tests[name][1] == "pass" for name in cpu_cases)
    assert "max_relative_error" in tests["test_models_cuda::test_fp32_matches_float64[cpu-hcic-contiguous]"][3]
    assert not any("[cuda" in name or name.startswith("test_align_cuda::") for name in tests)  # -m "not cuda"

    targets = markdown_table(report, "## Targets")
    assert len(targets) == 10 and all(row[3] == "n/a (CPU dry run)" for row in targets)
    assert [row[1] for row in targets[-3:]] == ["<= 1.3x (issue 24)"] * 2 + ["reported (issue 27)"]
    assert all(row[2] != "-" for row in targets[-3:])  # the dry run measured them
    benchmark_text = report.split("\n## 3. benchmarks\n", 1)[1]
    for table_header in (
        "| shape | op | pass |",
        "| backbone | setting | batch 1 (images/s) |",
        "| backbone | setting | images timed |",
        "| backbone | eager (images/s) | aot_eager",
    ):
        assert table_header in benchmark_text, table_header


def test_budget_stops_the_run_and_still_reports(tmp_path):
    report_path = tmp_path / "report.md"
    done, seconds = run_script("--report", str(report_path), "--cpu-dry-run", "--budget-s", "12", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert seconds < 12 + 10  # a stopped child gets 5 s after SIGTERM
    report = report_path.read_text()
    assert "- result: **FAIL**" in report
    checks = {row[1]: row[2] for row in markdown_table(report, "## Checks")}
    assert checks["pytest tests/test_align_cuda.py tests/test_models_cuda.py"] in ("timeout", "not run")
    assert [status for name, status in checks.items() if name.startswith("bench_")] == ["not run"] * 6
    assert checks[f"report written to {report_path}"] == "pass"


def test_a_stopped_command_takes_its_children_along(tmp_path):
    pid_file = tmp_path / "child.pid"
    program = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    begin = time.monotonic()
    result = gpu_check.run_command([sys.executable, "-c", program], 3.0, tmp_path / "log")
    assert result.returncode is None and time.monotonic() - begin < 15
    assert not process_alive(int(pid_file.read_text()))


def test_bad_arguments_write_nothing(tmp_path):
    existing = tmp_path / "report.md"
    existing.write_text("kept")
    for arguments in (
        ["--report", str(existing), "--cpu-dry-run"],
        ["--report", str(tmp_path / "missing" / "report.md"), "--cpu-dry-run"],
        ["--report", str(tmp_path / "new.md"), "--cpu-dry-run", "--budget-s", "1"],
    ):
        with pytest.raises(SystemExit) as stopped:
            gpu_check.parse_args(arguments)
        assert stopped.value.code == 2
    assert existing.read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_cuda_mode_without_cuda_is_refused(tmp_path, capsys):
    assert gpu_check.main(["--report", str(tmp_path / "report.md")]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_junit_rows_hand_written(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(
        textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?>
        <testsuites><testsuite name="pytest" tests="3">
          <testcase classname="tests.test_models_cuda" name="test_a[cuda]" time="1.25">
            <properties><property name="score_max_relative_error" value="2.00e-06"/></properties>
          </testcase>
          <testcase classname="tests.test_align_cuda" name="test_b" time="0.5">
            <failure message="AssertionError: score: 3.1e-02&#10;assert 0.031 &lt; 0.02">long text</failure>
          </testcase>
          <testcase classname="tests.test_align_cuda" name="test_c" time="0.000">
            <skipped type="pytest.skip" message="needs a CUDA device">skipped</skipped>
          </testcase>
        </testsuite></testsuites>
        """)
    )
    assert gpu_check.junit_rows(path) == [
        {
            "id": "test_models_cuda::test_a[cuda]",
            "status": "pass",
            "seconds": 1.25,
            "message": "",
            "properties": {"score_max_relative_error": "2.00e-06"},
        },
        {
            "id": "test_align_cuda::test_b",
            "status": "fail",
            "seconds": 0.5,
            "message": "AssertionError: score: 3.1e-02",
            "properties": {},
        },
        {
            "id": "test_align_cuda::test_c",
            "status": "skip",
            "seconds": 0.0,
            "message": "needs a CUDA device",
            "properties": {},
        },
    ]


def test_targets_hand_computed():
    results = {
        "align": {
            "bandwidth": [
                {"op": "roi", "compulsory_bytes": 1e6, "share_of_copy": 0.2},
                {"op": "both", "compulsory_bytes": 2.5e8, "share_of_copy": 0.55},
            ]
        },
        "model": {
            "inference": [
                {
                    "backbone": "vgg16",
                    "dtype": "bfloat16",
                    "channels_last": True,
                    "best_images_per_s": 2999.0,
                    "best_batch": 32,
                },
                {
                    "backbone": "vgg16",
                    "dtype": "float32",
                    "channels_last": True,
                    "best_images_per_s": 9000.0,
                    "best_batch": 64,
                },
            ],
            "limits": [
                {
                    "backbone": "vgg16",
                    "setting": "cuda bfloat16 channels-last",
                    "share_of_bound": 0.25,
                    "matmul_tflops": 700.0,
                    "backbone_gflop": 55.1,
                }
            ],
        },
        "epoch": {
            "epoch": [
                {
                    "backbone": "vgg16",
                    "setting": "cuda float32 channels-last",
                    "images": 1036,
                    "gaicd_epoch_seconds": 15.5,
                    "peak_memory_mb": 3000.0,
                    "syncs_per_step": {"cropping_model.py:598": 3, "a.py:1": 1},
                },
                {
                    "backbone": "vgg16",
                    "setting": "cuda bfloat16 channels-last",
                    "images": 500,
                    "gaicd_epoch_seconds": 9.0,
                    "peak_memory_mb": 2000.0,
                    "syncs_per_step": {},
                },
            ]
        },
    }
    results["crop"] = {
        "runs": [
            {"backbone": "vgg16", "ratios": "any", "ratio_candidates": "dense", "photos": 8, "total_s": 2.0},
            {
                "backbone": "vgg16",
                "ratios": "any 1:1",
                "ratio_candidates": "dense",
                "photos": 8,
                "total_s": 2.6,
                "versus_one": 1.3,
            },
            {
                "backbone": "vgg16",
                "ratios": "any 1:1",
                "ratio_candidates": "fast",
                "photos": 8,
                "total_s": 2.8,
                "versus_one": 1.4,
            },
        ]
    }
    results["app"] = {
        "latency_median_s": 0.0421,
        "latency_max_s": 0.05,
        "latency_runs": 10,
        "clients": 8,
        "server_photos_per_s": 55.55,
    }
    rows = gpu_check.target_rows(results, dry_run=False)
    assert [row[3] for row in rows] == [
        "met",
        "NOT met",
        "not measured",
        "for comparison",
        "met",
        "NOT met",
        "NOT met",
        "met",
        "met",
        "met",
        "NOT met",
        "reported",
    ]
    assert rows[9][2] == "1.30x (325 ms a photo, 8 photos)" and rows[10][2].startswith("1.40x (350 ms")
    assert rows[11][2] == "median 42 ms, slowest 50 ms of 10; 8 clients: 55.5 photos/s"
    assert rows[0][2] == "55% (250 MB compulsory)"
    assert rows[1][2] == "2,999 images/s (batch 32)"
    assert rows[3][2] == "vgg16 15.0-24.0x"  # 2,999 / 200 and 2,999 / 125
    assert rows[6][2] == "4: cropping_model.py:598 x3, a.py:1 x1"
    assert rows[7][2] == "9.0 s (500 images timed, extrapolated), peak memory 2,000 MB"
    assert rows[8][2] == "0: none"
    assert all(row[3] == "n/a (CPU dry run)" for row in gpu_check.target_rows(results, dry_run=True))
    unmeasured = gpu_check.target_rows({}, dry_run=False)[-2:]
    assert [row[2:] for row in unmeasured] == [("-", "not measured")] * 2
