"""benchmarks/loader_throughput.py runs end to end at a tiny size and writes well-formed results (no timing
is asserted: speed targets live in benchmarks/, never in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> None:
    """benchmarks/`script` with `args`, in a fresh process from the repository root; its output's tail if it fails."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_loader_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="scikit-image (envs/requirements-dev.txt) makes the benchmark's photographs")
    args = ["--images", "130", "--workers", "0", "--repeats", "1", "--breakdown", "4", "--out", str(tmp_path)]
    run_benchmark("loader_throughput.py", *args)
    result = json.loads((tmp_path / "loader_throughput.json").read_text())
    assert result["workload"]["images"] == 130 and 20 < result["workload"]["mean_kb"] < 300
    assert result["machine"]["cpu"] and result["machine"]["versions"]["simplejpeg"]
    rows = {(r["view"], r["loader"]): r for r in result["results"]}
    official = "ImageFolder + PIL (official path)"
    expected = {official, "shards, decode=pil (before)", "shards, decode=cpu", "shards re-encoded 320 px, decode=cpu"}
    assert {loader for _, loader in rows} == expected
    assert {view for view, _ in rows} == {"pretrain", "finetune"}
    for row in rows.values():
        assert row["images_per_cpu_second"] > 0 and row["images_per_second_wall"] > 0 and len(row["runs"]) == 1
    assert all(rows[(view, official)]["ratio_per_cpu_second"] == 1 for view in ("pretrain", "finetune"))
    steps = result["breakdown_ms_per_image"]
    assert len(steps) == 10 and all(ms > 0 for ms in steps.values())
    table = (tmp_path / "loader_throughput.md").read_text()
    assert result["machine"]["cpu"] in table and "| pretrain | shards, decode=cpu | 0 |" in table


def test_read_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="scikit-image (envs/requirements-dev.txt) makes the benchmark's photographs")
    args = ["--images", "300", "--per-shard", "100", "--samples", "128", "--keep-cache", "--out", str(tmp_path)]
    run_benchmark("loader_reads.py", *args)
    result = json.loads((tmp_path / "loader_reads.json").read_text())
    assert result["workload"]["shards"] == 3 and result["workload"]["samples_read"] == 128
    runs = result["results"]
    assert len(runs) == 3 and {r["cache"] for r in runs.values()} == {"warm"}  # --keep-cache: nothing dropped
    for r in runs.values():
        assert r["us_per_image_wall"] > 0 and r["us_per_image_cpu"] >= 0 and 20 < r["image_kb"] < 300
