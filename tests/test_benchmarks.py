"""The benchmark harness runs on CPU at tiny sizes and writes well-formed results; `nepa estimate` prints every stage
with measured or labelled-assumed speed; the analytic FLOPs match torch's counter.

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
from nepa.cli import main as nepa_main
from nepa.config import DataParams
from nepa.data.embedded import find_fashion_mnist
from nepa.errors import UserError
from nepa.estimate import IMAGENET_TRAIN, forward_flops

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from zero_memory import largest_fitting  # noqa: E402

STAGE_LINES = [
    *(f"ViT-{s} {stage}" for s in "BL" for stage in ("pretrain", "finetune", "probe", "segment")),
    *(f"ablation {v} (B) {stage}" for v in ("no_shift", "plain_vit", "mask_60", "ft_causal") for stage in
      ("pretrain", "finetune")),
]  # fmt: skip


def bench(script: str, out: Path, *args: str) -> dict:
    """Run a benchmark on CPU, one thread; its single JSON result (and check the CSV beside it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--device", "cpu", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)  # fmt: skip
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
    arch = dict(img_size=32, patch_size=4, embed_dim=cfg.embed_dim, depth=cfg.depth, mlp_hidden_dim=cfg.mlp_hidden_dim,
                mlp_gated=gated)  # fmt: skip
    assert forward_flops(**arch, causal=False) == counter.get_total_flops() / 2
    t, d = 65, cfg.embed_dim
    assert (
        forward_flops(**arch, causal=False) - forward_flops(**arch, causal=True) == cfg.depth * 4 * d * t * (t - 1) / 2
    )


# ---- nepa estimate --------------------------------------------------------------------------------------------


def estimate(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str, params: str = "seed: 0\n") -> str:
    (tmp_path / "params.yaml").write_text(params)
    capsys.readouterr()
    assert nepa_main(["estimate", "--params", str(tmp_path / "params.yaml"), *args]) == 0
    return capsys.readouterr().out


def stage_line(out: str, stage: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(stage + " "))


def fake_result(folder: Path, name: str, device: str, date: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "step_throughput", "date": date, "device": {"type": device, "name": "NVIDIA H100 80GB HBM3"},
              "results": [{"status": "ok", "compile": False, "precision": "bf16", **r} for r in rows]}  # fmt: skip
    (folder / name).write_text(json.dumps(result))


def test_estimate_without_a_gpu_measurement_says_every_speed_is_assumed(tmp_path: Path, capsys) -> None:
    fake_result(tmp_path / "bench", "step_throughput_cpu_x.json", "cpu", "2030-01-01", [
        {"model": "nepa-B-swiglu", "batch": 128, "images_per_s": 5.0}])  # fmt: skip
    out = estimate(tmp_path, capsys, "--benchmarks", str(tmp_path / "bench"))
    assert "NO GPU MEASUREMENT" in out and "scale embedded" in out and "MEASURED" not in out
    for stage in STAGE_LINES:
        assert "ASSUMED A" in stage_line(out, stage), stage
    assert "988.6" in stage_line(out, "ViT-B pretrain") and "296.6" in stage_line(out, "ViT-L pretrain")
    assert "the paper's cost statement" in out and "8 GPU(s)" in out and "total" in out
    # B pretraining at the paper's speed on the paper's 8 GPUs takes the paper's 3 days
    assert " 3.0 d " in stage_line(out, "ViT-B pretrain")


def test_estimate_uses_the_newest_gpu_measurement(tmp_path: Path, capsys) -> None:
    bench_dir = tmp_path / "bench"
    fake_result(bench_dir, "step_throughput_cuda_old.json", "cuda", "2030-01-01T00:00:00+00:00", [
        {"model": "nepa-B-swiglu", "batch": 128, "images_per_s": 100.0}])  # fmt: skip
    fake_result(bench_dir, "step_throughput_cuda_new.json", "cuda", "2030-02-01T00:00:00+00:00", [
        {"model": "nepa-B-swiglu", "batch": 128, "images_per_s": 1500.0},
        {"model": "nepa-B-swiglu", "batch": 256, "images_per_s": 9999.0},
        {"model": "nepa-B-swiglu", "batch": 128, "images_per_s": 7777.0, "compile": True},
        {"model": "nepa-L", "batch": 256, "images_per_s": 500.0}])  # fmt: skip
    out = estimate(tmp_path, capsys, "--benchmarks", str(bench_dir), "--gpus", "16")
    b, l = stage_line(out, "ViT-B pretrain"), stage_line(out, "ViT-L pretrain")
    assert "measured M" in b and "1500.0" in b and "measured M" in l and "500.0" in l
    hours = 1600 * IMAGENET_TRAIN / 1500 / 3600
    wall = hours / 16
    assert f"{hours:,.1f}" in b and (f"{wall / 24:.1f} d" if wall >= 48 else f"{wall:.1f} h") in b and "  16  " in b
    assert "step_throughput_cuda_new.json" in out and "gelu MLP standing in for swiglu" in out
    assert "NO GPU MEASUREMENT" not in out and "ASSUMED" not in out.split("How the other")[0]
    for stage in STAGE_LINES:
        assert "measured M" in stage_line(out, stage)
    assert "  1  " in stage_line(out, "ViT-B probe")  # the probe runs on one process


def test_estimate_gpus_default_to_the_pretrain_launcher(tmp_path: Path, capsys) -> None:
    params = "launcher:\n  stages:\n    pretrain: {nodes: 2, gpus_per_node: 4}\n"
    out = estimate(tmp_path, capsys, "--benchmarks", str(tmp_path), params=params)
    assert "on 8 GPU(s) (launcher.stages.pretrain: 2 node(s) x 4 GPUs)" in out


def test_estimate_from_embedded_params_uses_the_full_scale_schedule(tmp_path: Path, capsys) -> None:
    """An embedded params.yaml's schedule (pretrain.epochs 1, ...) must not leak into a full reproduction's estimate;
    --set still applies."""
    params = (
        "pretrain: {epochs: 1, global_batch: 64, micro_batch: 64}\nfinetune: {epochs: 1}\nsegment: {iterations: 150}\n"
    )
    out = estimate(tmp_path, capsys, "--benchmarks", str(tmp_path), params=params)
    assert "1600 epochs" in stage_line(out, "ViT-B pretrain") and "800 epochs" in stage_line(out, "ViT-L pretrain")
    assert "100 epochs" in stage_line(out, "ViT-B finetune") and "160,000 it" in stage_line(out, "ViT-B segment")
    out = estimate(tmp_path, capsys, "--benchmarks", str(tmp_path), "--set", "recipe=official", "--set",
                   "finetune.epochs=7", params=params)  # fmt: skip
    assert "1600 epochs" in stage_line(out, "ViT-L pretrain") and "7 epochs" in stage_line(out, "ViT-L finetune")
