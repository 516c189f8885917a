"""The benchmark harness runs on CPU at tiny sizes and writes well-formed results; the analytic FLOPs of `nepa
estimate` match torch's counter (tests/test_estimate.py: the estimate itself).

No timing assertions: speed targets live in benchmarks/ (README, the scripts' verdicts), never in tests.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nepa import models
from nepa.config import DataParams
from nepa.data.embedded import find_fashion_mnist
from nepa.errors import UserError
from nepa.estimate import forward_flops

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from zero_memory import largest_fitting  # noqa: E402


def bench(script: str, out: Path, *args: str) -> dict:
    """Run a benchmark on CPU, one thread; its single JSON result (and check the CSV beside it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--device", "cpu", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [path] = out.glob("*.json")
    result = json.loads(path.read_text())
    with path.with_suffix(".csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(result["results"])
    assert result["command"].startswith(f"python {BENCHMARKS / script}") and "--device cpu" in result["command"]
    assert result["device"]["type"] == "cpu" and result["device"]["name"] and result["device"]["count"] == 1
    assert {"torch", "timm", "deepspeed", "cuda", "python"} <= set(result["versions"])
    assert result["versions"]["torch"] == torch.__version__ and result["date"]
    return result


def test_step_throughput_runs_on_cpu(tmp_path: Path) -> None:
    result = bench("step_throughput.py", tmp_path, "--models", "nepa-tiny", "timm-tiny", "--batch", "4", "--steps",
                   "1", "--warmup", "1", "--compile", "off", "--threads", "1")  # fmt: skip
    rows = {r["model"]: r for r in result["results"]}
    assert set(rows) == {"nepa-tiny", "timm-tiny"}
    for row in rows.values():
        assert row["status"] == "ok" and row["batch"] == 4 and row["precision"] == "fp32" and not row["compile"]
        assert row["images_per_s"] > 0 and row["achieved_tflops"] > 0 and row["mfu"] is None
    # the same size: NEPA's MLP is the peer's GeLU 4x; causal attention counts half the scores
    assert rows["nepa-tiny"]["train_gflop_per_image"] < rows["timm-tiny"]["train_gflop_per_image"]
    assert rows["nepa-tiny"]["params_m"] == pytest.approx(rows["timm-tiny"]["params_m"], rel=0.05)
    assert result["sdpa"]["nepa-tiny"]["causal"] and result["sdpa"]["nepa-tiny"]["fused_attention"]
    assert any("scaled_dot_product" in op for op in result["sdpa"]["nepa-tiny"]["ops"])
    assert any("the CPU target: eager fp32" in line for line in result["targets"])


def test_zero_memory_runs_on_cpu(tmp_path: Path) -> None:
    result = bench("zero_memory.py", tmp_path, "--stages", "0", "3", "--batch", "4", "--steps", "1")
    assert [r["zero_stage"] for r in result["results"]] == [0, 3]
    for row in result["results"]:
        assert row["status"] == "ok", row
        assert row["measure"] == "cpu_peak_rss" and row["cpu_peak_rss_gb"] > row["cpu_rss_before_model_gb"] > 0
        assert row["largest_batch"] is None  # no out-of-memory to search for on CPU
    assert "not GPU memory" in result["settings"]["what"]


def test_grad_checkpointing_runs_on_cpu(tmp_path: Path) -> None:
    report = tmp_path / "grad_checkpointing.md"
    result = bench("grad_checkpointing.py", tmp_path, "--model", "nepa-tiny", "--batch", "4", "--steps", "2",
                   "--threads", "1", "--report", str(report))  # fmt: skip
    off, on = result["results"]
    assert (off["grad_checkpointing"], on["grad_checkpointing"]) == (False, True)
    assert off["losses"] == on["losses"] and len(off["losses"]) == 2  # recomputation changes no number
    assert on["peak_rss_gb"] > on["rss_before_first_step_gb"] > 0 and on["step_s"] > 0
    assert "| on |" in report.read_text() and "2 threads" not in report.read_text()


def test_end_to_end_runs_on_cpu(tmp_path: Path) -> None:
    try:
        find_fashion_mnist(DataParams().fashion_mnist_dir)
    except UserError as e:
        pytest.skip(str(e))
    result = bench("end_to_end.py", tmp_path, "--batch", "4", "--row-steps", "1", "--rows", "2", "--workers", "1")
    rows = {r["mode"]: r for r in result["results"]}
    assert set(rows) == {"model_only", "end_to_end", "loader_only"}
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 for r in rows.values()), rows
    assert len(rows["end_to_end"]["row_images_per_s"]) == 2
    assert result["ratio_end_to_end_to_model_only"] == pytest.approx(
        rows["end_to_end"]["images_per_s"] / rows["model_only"]["images_per_s"], abs=1e-3
    )
    assert result["settings"]["data"]["split"] == "temporary"


@pytest.mark.parametrize("granularity", [1, 8])
@pytest.mark.parametrize("threshold", [0, 1, 7, 8, 63, 64, 65, 500, 2048, 5000])
def test_largest_fitting_finds_the_threshold(threshold: int, granularity: int) -> None:
    probed = []

    def fits(b: int) -> bool:
        probed.append(b)
        return b <= threshold

    found = largest_fitting(fits, start=64, limit=2048, granularity=granularity)
    assert found == min(threshold, 2048) // granularity * granularity
    assert all(b % granularity == 0 and 0 < b <= 2048 for b in probed) and len(probed) <= 20


@pytest.mark.parametrize("gated", [False, True])
def test_analytic_flops_match_torch_flop_counter(gated: bool) -> None:
    """Bidirectional, so that the math SDPA path (which torch's counter sees) computes what is counted."""
    model = models.create("nepa_tiny_patch4_32", mlp_gated=gated, mlp_act="silu" if gated else "gelu", causal=False)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.forward_features(torch.randn(2, 3, 32, 32))
    cfg = model.cfg
    arch = dict(
        img_size=32,
        patch_size=4,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        mlp_hidden_dim=cfg.mlp_hidden_dim,
        mlp_gated=gated,
    )
    assert forward_flops(**arch, causal=False) == counter.get_total_flops() / 2
    t, d = 65, cfg.embed_dim
    assert (
        forward_flops(**arch, causal=False) - forward_flops(**arch, causal=True) == cfg.depth * 4 * d * t * (t - 1) / 2
    )
