"""`nepa estimate` sums the audited full-scale plan: every job with GPUs, measured or labelled-assumed speed, the
--params file it read; an embedded params.yaml's schedule never leaks into it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nepa.cli import main as nepa_main
from nepa.presets import IMAGENET_TRAIN

FULL = "scale: full\nsizes: [base, large]\nmodel: {size: base}\ndata: {imagenet_src: /in1k, ade20k_src: /ade}\n"


def estimate(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str, params: str = "seed: 0\n") -> str:
    (tmp_path / "params.yaml").write_text(params)
    capsys.readouterr()
    assert nepa_main(["estimate", "--params", str(tmp_path / "params.yaml"), *args]) == 0
    return capsys.readouterr().out


def job_lines(out: str) -> dict[str, str]:
    """The table's job lines by job name ('pretrain base-nepa')."""
    stages = ("pretrain ", "finetune ", "probe ", "segment ")
    return {" ".join(line.split()[:2]): line for line in out.splitlines() if line.startswith(stages)}


def gpus(line: str) -> int:
    return int(line.split()[5])  # job (2 words), GPU-hours, wall (2 words), GPUs


def fake_result(folder: Path, name: str, device: str, date: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "step_throughput",
        "date": date,
        "device": {"type": device, "name": "NVIDIA H100 80GB HBM3"},
        "results": [{"status": "ok", "compile": False, "precision": "bf16", **r} for r in rows],
    }
    (folder / name).write_text(json.dumps(result))


def test_without_a_gpu_measurement_every_speed_is_assumed(tmp_path: Path, capsys) -> None:
    fake_result(
        tmp_path / "bench",
        "step_throughput_cpu_x.json",
        "cpu",
        "2030-01-01",
        [{"model": "nepa-B-swiglu", "batch": 128, "images_per_s": 5.0}],
    )
    out = estimate(tmp_path, capsys, "--benchmarks", str(tmp_path / "bench"))
    assert "NO GPU MEASUREMENT" in out and "MEASURED" not in out and "the paper's cost statement" in out
    assert f"Params: {tmp_path / 'params.yaml'} is at scale embedded" in out  # the file it read, not "params.yaml"
    lines = job_lines(out)
    assert all("ASSUMED A" in line for line in lines.values())
    assert "988.6" in lines["pretrain base-nepa"] and "296.6" in lines["pretrain large-nepa"]
    # B pretraining at the paper's speed on the paper's 8 GPUs takes the paper's 3 days, L its 5
    assert " 3.0 d " in lines["pretrain base-nepa"] and " 5.0 d " in lines["pretrain large-nepa"]
    assert "total, target all" in out and "total, target ablations" in out


def test_every_gpu_stage_gets_gpus_and_the_probe_one(tmp_path: Path, capsys) -> None:
    lines = job_lines(estimate(tmp_path, capsys, "--benchmarks", str(tmp_path)))
    assert {name.split()[0] for name in lines} == {"pretrain", "finetune", "probe", "segment"}
    assert all(gpus(line) == (1 if name.startswith("probe") else 8) for name, line in lines.items())


def test_the_newest_gpu_measurement_is_used(tmp_path: Path, capsys) -> None:
    bench_dir = tmp_path / "bench"
    fake_result(
        bench_dir,
        "step_throughput_cuda_old.json",
        "cuda",
        "2030-01-01T00:00:00+00:00",
        [{"model": "nepa-B-swiglu", "batch": 128, "images_per_s": 100.0}],
    )
    fake_result(
        bench_dir,
        "step_throughput_cuda_new.json",
        "cuda",
        "2030-02-01T00:00:00+00:00",
        [
            {"model": "nepa-B-swiglu", "batch": 128, "images_per_s": 1500.0},
            {"model": "nepa-B-swiglu", "batch": 256, "images_per_s": 9999.0},
            {"model": "nepa-B-swiglu", "batch": 128, "images_per_s": 7777.0, "compile": True},
            {"model": "nepa-L", "batch": 256, "images_per_s": 500.0},
        ],
    )
    out = estimate(tmp_path, capsys, "--benchmarks", str(bench_dir), "--gpus", "16")
    lines = job_lines(out)
    b, l = lines["pretrain base-nepa"], lines["pretrain large-nepa"]
    assert "measured M" in b and "1500.0" in b and "measured M" in l and "500.0" in l
    hours = 499_200 * 4096 / 1500 / 3600  # 1600 epochs of 312 steps at batch 4096
    assert f"{hours:,.1f}" in b and f"{hours / 16:.1f} h" in b and gpus(b) == 16
    assert "step_throughput_cuda_new.json" in out and "gelu MLP standing in for swiglu" in out
    assert "NO GPU MEASUREMENT" not in out and "ASSUMED" not in out.split("How the other")[0]
    assert all("measured M" in line for line in lines.values())
    assert gpus(lines["probe base-nepa"]) == 1  # the probe runs on one process


def test_gpus_come_from_the_launcher(tmp_path: Path, capsys) -> None:
    params = "launcher:\n  stages:\n    pretrain: {nodes: 2, gpus_per_node: 8}\n    segment: {gpus_per_node: 4}\n"
    lines = job_lines(estimate(tmp_path, capsys, "--benchmarks", str(tmp_path), params=params))
    assert gpus(lines["pretrain large-nepa"]) == 16 and gpus(lines["segment base-nepa"]) == 4
    assert gpus(lines["finetune base-nepa"]) == 8


def test_embedded_params_give_the_full_scale_schedule(tmp_path: Path, capsys) -> None:
    """An embedded params.yaml's schedule (pretrain.epochs 1, ...) must not leak into a full reproduction's estimate;
    --set still applies."""
    params = (
        "pretrain: {epochs: 1, global_batch: 64, micro_batch: 64}\nfinetune: {epochs: 1}\nsegment: {iterations: 9}\n"
    )
    lines = job_lines(estimate(tmp_path, capsys, "--benchmarks", str(tmp_path), params=params))
    assert "499,200 steps x batch 4096" in lines["pretrain base-nepa"]  # 1600 epochs
    assert "249,600 steps x batch 4096" in lines["pretrain large-nepa"]  # 800 epochs
    assert "50,000 steps x batch 2048" in lines["pretrain base-no_causal"]  # Table 1a
    assert "100 epochs" in lines["finetune base-nepa"] and "160,000 it" in lines["segment base-nepa"]
    out = estimate(
        tmp_path,
        capsys,
        "--benchmarks",
        str(tmp_path),
        "--set",
        "recipe=official",
        "--set",
        "ablation_variants=[no_causal]",  # Table 1b and the appendix compare NEPA's SwiGLU with GeLU: paper only
        "--set",
        "finetune.epochs=7",
        params=params,
    )
    lines = job_lines(out)
    assert "499,200 steps" in lines["pretrain large-nepa"] and "7 epochs" in lines["finetune large-nepa"]


def test_full_scale_params_are_estimated_as_they_are(tmp_path: Path, capsys) -> None:
    out = estimate(tmp_path, capsys, "--benchmarks", str(tmp_path), params=FULL.replace("[base, large]", "[base]"))
    lines = job_lines(out)
    assert f"Params: {tmp_path / 'params.yaml'} (scale full)" in out
    assert "pretrain large-nepa" not in lines and "pretrain base-nepa" in lines
    assert IMAGENET_TRAIN // 2048 * 80 == 50_000 and "50,000 steps" in lines["pretrain base-nepa_50k"]
