"""The GPU suite (benchmarks/gpu_suite.sh) and its pieces run on CPU at tiny sizes and write what they promise.

No timing assertions: speed targets live in benchmarks/ and the scripts' verdicts. The slow test runs every
section of the suite in its CPU smoke mode, the way a GPU session runs it (the same script, the same files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def environment(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**keep, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra}


def suite(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = environment(
        NEPA_SUITE_RESULTS=str(tmp_path / "results"),
        NEPA_SUITE_WORK=str(tmp_path / "work"),
        OUT=str(tmp_path / "out"),
        PYTHON=sys.executable,
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "work").mkdir()
    return subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_suite.sh"), "--smoke", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def results(tmp_path: Path, benchmark: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results").glob(f"{benchmark}_cpu_*.json"))]


def test_step_throughput_measures_side_by_side_rounds(tmp_path: Path) -> None:
    """Every model runs in every round; the ratio to the peer is the median of same-round ratios."""
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "step_throughput.py"),
            "--device",
            "cpu",
            "--models",
            "nepa-tiny",
            "timm-tiny",
            "--batch",
            "2",
            "--rounds",
            "3",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--no-sdpa-check",
            "--out",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [result] = results(tmp_path, "step_throughput")
    rows = {r["model"]: r for r in result["results"]}
    nepa, peer = rows["nepa-tiny"], rows["timm-tiny"]
    assert len(nepa["round_s"]) == len(peer["round_cpu_s"]) == 3 and nepa["compile"] is False
    ratios = sorted(p / n for n, p in zip(nepa["round_cpu_s"], peer["round_cpu_s"], strict=True))
    assert nepa["vs_peer"]["peer"] == "timm-tiny" and nepa["vs_peer"]["clock"] == "process CPU time"
    assert "vs_peer" not in peer and nepa["images_per_cpu_s"] > 0
    assert nepa["vs_peer"]["min"] <= nepa["vs_peer"]["median"] <= nepa["vs_peer"]["max"]
    assert nepa["vs_peer"]["median"] == pytest.approx(ratios[1], rel=0.01)  # from the rounded times
    assert "the CPU target: eager fp32" in result["targets"][0]


def test_gpu_data_makes_and_prepares_a_split(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_data.py"), str(tmp_path / "d"), "--images", "12", "--workers", "1"],
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    made = json.loads(done.stdout.strip().splitlines()[-1])
    assert made["images"] == 12 and made["source"] and Path(made["split"]).is_dir()
    manifest = json.loads((tmp_path / "d" / "shards" / "imagenet" / "manifest.json").read_text())
    assert "train" in json.dumps(manifest) and list((tmp_path / "d" / "raw" / "val").iterdir())


def test_suite_writes_its_log_summary_and_packed_results(tmp_path: Path) -> None:
    done = suite(tmp_path, "--only", "step_l")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [summary] = (tmp_path / "results").glob("suite_*.md")
    text = summary.read_text()
    assert "| step_l | exit 0 |" in text and "step_b" not in text  # --only runs that section alone
    with tarfile.open(tmp_path / "out" / "gpu_results.tgz") as packed:
        names = packed.getnames()
    assert any(n.startswith("step_throughput_cpu_") and n.endswith(".json") for n in names)
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"gpu_results.tgz", summary.name}


@pytest.mark.slow
def test_whole_suite_runs_on_cpu_in_smoke_mode(tmp_path: Path) -> None:
    """Every section, as on the GPU; on CPU in fp32 the preempted and resumed run ends bit-identical."""
    done = suite(tmp_path, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = next((tmp_path / "results").glob("suite_*.md")).read_text()
    for section in ("step_b", "step_l", "data", "engine", "e2e", "zero", "compiled"):
        assert f"| {section} | exit 0 |" in text, text
    [engine] = results(tmp_path, "engine_resume")
    assert [r["exit"] for r in engine["results"]] == [0, 75, 0], engine["results"]
    assert engine["comparison"]["bit_identical"] and engine["comparison"]["final_step"] == 6
    assert engine["comparison"]["resumed_from_step"] >= 4 and engine["comparison"]["steps_logged_once"]
    [compiled] = [r for r in results(tmp_path, "step_throughput") if r["settings"]["compile"] == "on"]
    assert all(r["status"] == "ok" and r["compile_scope"] == "blocks" for r in compiled["results"])
    starts = {(s["compile_scope"], s["cache"]): s for s in compiled["compile_starts"]}
    assert set(starts) == {("blocks", "cold"), ("blocks", "warm")}
    assert all(s["status"] == "ok" and s["first_step_s"] > 0 for s in starts.values())
