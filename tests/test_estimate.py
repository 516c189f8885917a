"""`nepa estimate` sums the audited full-scale plan: every job with GPUs, its speed measured, assumed or calibrated
on a named public run, the exchange between nodes, the --params file it read; an embedded params.yaml's schedule
never leaks into it. The cost model's FLOPs are torch's count of the real modules, and its ADE20K estimate is
within 2x of the public figure it names, scaled by the stated GPU ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nepa.cli import main as nepa_main
from nepa.cost import GPU_RATIO, MMSEG_ITERATION_S, exchange_hours, forward_flops, upernet_flops, vit_arch
from nepa.measurements import SCHEMA
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


def gpu_hours(line: str) -> float:
    return float(line.split()[2].replace(",", ""))


def fake_result(folder: Path, name: str, device: str, date: str, rows: list[dict], schema: str = SCHEMA) -> None:
    """A step_throughput result in the measurements layout (nepa/measurements.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "schema": schema,
        "benchmark": "step_throughput",
        "date": date,
        "device": {"type": device, "name": "NVIDIA H100 80GB HBM3"},
        "results": [{"status": "ok", "compile": False, "precision": "bf16", "family": "nepa", **r} for r in rows],
    }
    (folder / name).write_text(json.dumps(result))


def test_without_a_gpu_measurement_every_speed_is_assumed(tmp_path: Path, capsys) -> None:
    fake_result(
        tmp_path / "bench",
        "step_throughput_cpu_x.json",
        "cpu",
        "2030-01-01",
        [{"size": "base", "mlp": "swiglu", "batch": 128, "images_per_s": 5.0}],
    )
    out = estimate(tmp_path, capsys, "--benchmarks", str(tmp_path / "bench"))
    assert "NO GPU MEASUREMENT" in out and "MEASURED" not in out and "the paper's cost statement" in out
    assert f"Params: {tmp_path / 'params.yaml'} is at scale embedded" in out  # the file it read, not "params.yaml"
    lines = job_lines(out)
    assert all(("ASSUMED A" if name.startswith("pretrain") else "calibrated C") in line for name, line in lines.items())
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
    fake_result(bench_dir, "old.json", "cuda", "2030-01-01T00:00:00+00:00",
                [{"size": "base", "mlp": "swiglu", "batch": 128, "images_per_s": 100.0}])  # fmt: skip
    fake_result(
        bench_dir,
        "any-name.json",  # read by what it says, not by its name
        "cuda",
        "2030-02-01T00:00:00+00:00",
        [
            {"size": "base", "mlp": "swiglu", "batch": 128, "images_per_s": 1500.0},
            {"size": "base", "mlp": "swiglu", "batch": 256, "images_per_s": 9999.0},
            {"size": "base", "mlp": "swiglu", "batch": 128, "images_per_s": 7777.0, "compile": True},
            {"size": "large", "mlp": "gelu", "batch": 256, "images_per_s": 500.0},
        ],
    )
    # named as the benchmarks used to name results, but not in the measurements layout: not read
    fake_result(bench_dir, "step_throughput_cuda_z.json", "cuda", "2031-01-01T00:00:00+00:00",
                [{"size": "base", "mlp": "swiglu", "batch": 128, "images_per_s": 3.0}], schema="")  # fmt: skip
    out = estimate(tmp_path, capsys, "--benchmarks", str(bench_dir), "--gpus", "16")
    lines = job_lines(out)
    b, l = lines["pretrain base-nepa"], lines["pretrain large-nepa"]
    assert "measured M" in b and "1500.0" in b and "measured M" in l
    compute = 499_200 * 4096 / 1500 / 3600  # 1600 epochs of 312 steps at batch 4096, in GPU-hours
    exchange = exchange_hours(vit_arch("base", "swiglu", causal=True), 499_200, 16, 2)  # --gpus 16: 2 nodes of 8
    assert gpu_hours(b) == pytest.approx(compute + 16 * exchange, abs=0.06) and gpus(b) == 16
    assert "any-name.json" in out and "the gelu MLP's FLOP/s standing in for swiglu" in out
    assert "NO GPU MEASUREMENT" not in out and "step_throughput_cuda_z" not in out
    assert all("measured M" in line for name, line in lines.items() if name.startswith("pretrain"))
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


def test_the_ade20k_estimate_is_within_2x_of_the_public_figure(tmp_path: Path, capsys) -> None:
    """mmsegmentation's UperNet ViT-B: 160k iterations of ~0.5 s on 8 V100 (docs/estimate.md), in H100 GPU-hours
    by the stated ratio; ViT-B fine-tuning against MAE's 100 epochs in 7h11m on 32 V100 likewise."""
    lines = job_lines(estimate(tmp_path, capsys, "--benchmarks", str(tmp_path)))
    public = 160_000 * MMSEG_ITERATION_S * 8 / 3600 / GPU_RATIO.value
    ours = gpu_hours(lines["segment base-nepa"])
    assert public / 2 <= ours <= public * 2, (ours, public)
    mae = (7 + 11 / 60) * 32 / GPU_RATIO.value
    assert mae / 2 <= gpu_hours(lines["finetune base-nepa"]) <= mae * 2


def test_the_gradient_exchange_between_nodes_is_counted(tmp_path: Path, capsys) -> None:
    """On 2 nodes each optimizer step adds a ring all-reduce of the fp32 gradients over the network; on one node
    (NVLink) nothing is added."""
    params = "launcher:\n  stages:\n    pretrain: {nodes: 2, gpus_per_node: 8}\n"
    two = job_lines(estimate(tmp_path, capsys, "--benchmarks", str(tmp_path), params=params))
    one = job_lines(estimate(tmp_path, capsys, "--benchmarks", str(tmp_path)))
    b2, b1 = two["pretrain base-nepa"], one["pretrain base-nepa"]
    assert "gradient exchange" in b2 and "gradient exchange" not in b1
    arch = vit_arch("base", "swiglu", causal=True)
    steps = 499_200
    volume = 2 * 15 / 16 * 4 * (3 * 14 * 14 * 768 + 12 * (4 * 768 * 768 + 3 * 768 * arch["mlp_hidden_dim"]))
    assert exchange_hours(arch, steps, 16, 2) == pytest.approx(steps * volume / 50e9 / 3600)
    # the same compute in GPU-hours on 16 GPUs as on 8, plus 16 GPUs' share of the exchange
    assert gpu_hours(b2) == pytest.approx(gpu_hours(b1) + 16 * exchange_hours(arch, steps, 16, 2), abs=0.2)


def test_the_flops_are_torchs_count_of_the_real_modules() -> None:
    """The segmentation job's FLOPs: torch's counter over nepa's UperNet on the NEPA backbone (meta tensors: no
    compute), in training (with the auxiliary head) and evaluation."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nepa import models
    from nepa.config import ModelParams
    from nepa.eval.upernet import UperNet

    knobs, arch, grid = ModelParams(size="base", mlp="swiglu"), vit_arch("base", "swiglu", causal=False), 37
    side = grid * arch["patch_size"]
    with torch.device("meta"):
        backbone = models.create(knobs.timm_name, **knobs.architecture(), causal=False, img_size=side)
        model = UperNet(backbone, (3, 5, 7, 11), 512, 150)
    for training in (True, False):
        model.train(training)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(2, 3, side, side, device="meta"))
        head = upernet_flops(embed_dim=768, channels=512, num_classes=150, grid=grid, training=training)
        assert forward_flops(**{**arch, "img_size": side}) + head == counter.get_total_flops() / 2
