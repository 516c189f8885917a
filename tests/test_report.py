"""`nepa report` over a small run tree written by real computations, rendered headless by Chromium.

The tree: Fashion-MNIST shards (`nepa prepare`), short real pretraining runs of a small NEPA model (nepa and
no stop-grad: metrics.csv in the engine's format, metrics.json by provenance.write_metrics, the model exported
with write_model_dir), and short real fine-tunings (pretrained and from scratch) evaluated on the val shards.
No probe or segmentation run: their rows must say "not run".
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nepa import models
from nepa.cli import main as nepa_main
from nepa.config import Params, load_params
from nepa.data.loaders import make_loader
from nepa.engine.ema import Ema
from nepa.engine.metrics import FIELDS, MetricsLog
from nepa.eval.classify import accuracy
from nepa.models.weights import write_model_dir
from nepa.objectives import pretrain_loss
from nepa.provenance import write_metrics
from nepa.report import maps, tables
from nepa.report.paper import ROWS

SMALL_MODEL = dict(embed_dim=48, depth=2, num_heads=3, mlp_hidden_dim=128)  # the tiny layout, narrower: seconds
PRETRAIN_STEPS, FINETUNE_EPOCHS, BATCH = 20, 2, 32
VAL_FIELDS = ("val_top1_online", "val_top5_online", "val_top1_ema", "val_top5_ema")


def batches(params: Params, split: str, view: str = "eval") -> list[tuple[torch.Tensor, torch.Tensor]]:
    folder = Path(params.data.root) / "shards" / "imagenet" / split
    return list(make_loader(view, folder, batch_size=BATCH, rank=0, world=1, seed=0, epoch=0, drop_last=False,
                            image_size=32))  # fmt: skip


def pretrain(params: Params) -> Path:
    """A short real pretraining of `params.variant`: its loss curve, metrics.json and exported model."""
    run = Path(params.runs) / params.run_name
    torch.manual_seed(0)
    model = models.create(params.model.timm_name, **{**params.model.architecture(), **SMALL_MODEL})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    data = batches(params, "train", "pretrain")
    log = MetricsLog(run / "pretrain" / "metrics.csv", None)
    t0 = time.perf_counter()
    for step in range(1, PRETRAIN_STEPS + 1):
        loss = pretrain_loss(model, data[step % len(data)][0], params.objective)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        wall = time.perf_counter() - t0
        log.append(dict(step=step, epoch=step / len(data), loss=loss.item(), lr=3e-3, grad_norm=norm.item(),
                        images_per_s=BATCH * step / wall, wall_s=wall))  # fmt: skip
    export = write_model_dir(
        run / "export", model.state_dict(), model.cfg, source="tests/test_report.py", weights="online"
    )
    write_metrics(run / "pretrain", "pretrain", {"final_loss": loss.item(), "steps": PRETRAIN_STEPS}, params,
                  checkpoint=export / "model.safetensors", seconds=wall)  # fmt: skip
    return export / "model.safetensors"


def finetune(params: Params, weights: Path | None, stage: str) -> None:
    """A short real fine-tuning with EMA, online and EMA top-1 on the val shards each epoch (finetune's format)."""
    folder = Path(params.runs) / params.run_name / stage
    torch.manual_seed(0)
    model = models.create(params.model.timm_name, pretrained=weights or False, num_classes=10, causal=False,
                          **({} if weights else {**params.model.architecture(), **SMALL_MODEL}))  # fmt: skip
    ema, shadow = Ema(model, 0.9), copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train, val = batches(params, "train"), batches(params, "val")
    log = MetricsLog(folder / "metrics.csv", None, fields=(*FIELDS, *VAL_FIELDS))
    t0 = time.perf_counter()
    for epoch in range(1, FINETUNE_EPOCHS + 1):
        for images, labels in train:
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update()
        shadow.load_state_dict(ema.state_dict())
        scores = {f"val_{k}_{name}": v for name, m in (("online", model), ("ema", shadow))
                  for k, v in accuracy(m, val, torch.device("cpu")).items()}  # fmt: skip
        step = epoch * len(train)
        log.append(dict(step=step, epoch=epoch, loss=loss.item(), lr=1e-3, grad_norm=0.0, images_per_s=0.0,
                        wall_s=time.perf_counter() - t0, **scores))  # fmt: skip
    reported = {"val_top1": scores["val_top1_ema"], "val_top5": scores["val_top5_ema"]}
    write_metrics(folder, "finetune", {**scores, **reported}, params, checkpoint=weights,
                  seconds=time.perf_counter() - t0, init=str(weights or "random"))  # fmt: skip


@pytest.fixture(scope="module")
def tree(fashion_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    (root / "params.yaml").write_text(
        f"runs: {root}/runs\nresults: {root}/results\nvariants: [nepa, no_stop_grad]\n"
        f"data: {{root: {root}/data, embedded_images: [64, 32], embedded_scenes: [4, 4], images_per_shard: 64, "
        f"workers: 1}}\nlauncher: {{folder: {root}/runs/slurm}}\n"
    )
    for dataset in ("embedded", "imagenet"):
        assert nepa_main(["prepare", dataset, "--params", str(root / "params.yaml")]) == 0
    torch.set_num_threads(2)
    for variant in ("nepa", "no_stop_grad"):
        params = load_params(root / "params.yaml", (f"variant={variant}",))
        finetune(params, pretrain(params), "finetune")
    finetune(load_params(root / "params.yaml"), None, "finetune-random")
    assert nepa_main(["report", "--params", str(root / "params.yaml"), "--images", "2"]) == 0
    return root


class Tables(HTMLParser):
    """The HTML's tables: [(header cells, [(row class, cells)])]."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[list[str], list[tuple[str, list[str]]]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append((dict(attrs).get("class") or "", []))
        elif tag in ("th", "td"):
            self.cell = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self.cell is not None:
            header, rows = self.tables[-1]
            (header if tag == "th" else rows[-1][1]).append("".join(self.cell))
            self.cell = None


def parsed_tables(html: str) -> list[pd.DataFrame]:
    parser = Tables()
    parser.feed(html)
    frames = []
    for header, rows in parser.tables:
        body = [(cls, cells) for cls, cells in rows if cells]
        frame = pd.DataFrame([cells for _, cells in body], columns=header)
        frames.append(frame.assign(row_class=[cls for cls, _ in body]))
    return frames


def test_report_tables(tree: Path) -> None:
    results = tree / "results"
    html = (results / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    assert html.count('src="data:image/png;base64,') == 3  # pretraining loss, fine-tuning curves, maps
    assert {p.name for p in (results / "report").glob("*.png")} == {
        "pretrain_loss.png", "finetune_curves.png", "maps_tiny-nepa.png"}  # fmt: skip
    frames = parsed_tables(html)
    headline = next(f for f in frames if {"Paper", "Ours", "Runs", "Direction", "Checkpoint"} <= set(f.columns))
    ablations = next(f for f in frames if "Ours: fine-tune top-1" in f.columns)
    rows = pd.concat([headline, ablations.rename(columns={"Ours: fine-tune top-1": "Ours"})], ignore_index=True)
    assert len(rows) == len(ROWS)

    def row(setting: str, model: str = "ViT-B") -> pd.Series:
        return rows[(rows["Setting"] == setting) & (rows["Model"].fillna("ViT-B") == model)].iloc[0]

    ours = json.loads((tree / "runs/tiny-nepa/finetune/metrics.json").read_text())
    bidirectional = row("ImageNet-1K top-1, bidirectional fine-tune")
    assert bidirectional["Paper"] == "83.8" and bidirectional["Runs"] == "tiny-nepa"
    assert bidirectional["Ours"] == f"{ours['metrics']['val_top1']:.2f} (1 seed)"
    assert bidirectional["row_class"] == "reduced" and bidirectional["Δ ours − paper"].startswith("n/a: reduced scale")
    assert bidirectional["Checkpoint"] == ours["provenance"]["checkpoint_sha256"][:12]
    assert bidirectional["Hardware"] == ours["provenance"]["hardware"]
    assert row("ImageNet-1K top-1, bidirectional fine-tune", "ViT-L")["Ours"] == "not run"
    segment = row("ADE20K mIoU, UperNet")
    assert segment["Ours"] == "not run (segment)" and segment["Runs"] == "tiny-nepa"
    assert segment["row_class"] == "notrun"
    assert row("linear probe, mean embedding")["Ours"] == "not run (probe)"
    collapse = row("no stop-grad")
    assert collapse["Paper"] == "collapses (loss → −1)" and collapse["Runs"] == "tiny-no_stop_grad"
    final = json.loads((tree / "runs/tiny-no_stop_grad/pretrain/metrics.json").read_text())["metrics"]["final_loss"]
    assert f"final loss {final:.4f} (1 seed), target similarity 0." in collapse["Direction"]
    assert collapse["Ours: pretraining loss (final)"] == f"{final:.4f} (1 seed)"
    assert row("no causal mask")["Ours"] == "not run"
    scratch = next(f for f in frames if "Random init" in f.columns)
    assert scratch.iloc[0]["Runs"] == "tiny-nepa" and scratch.iloc[0]["Metric (%)"] == "val_top1"
    environment = next(f for f in frames if list(f.columns[:2]) == ["Item", "Value"]).set_index("Item")["Value"]
    assert environment["torch"] == torch.__version__ and "not recorded" in environment["tiny-nepa: DeepSpeed config"]
    assert environment["SLURM jobs"].startswith("none")
    markdown = (results / "report.md").read_text()
    assert "| Table | Setting | Model | Paper | Ours |" in markdown and "](report/pretrain_loss.png)" in markdown
    assert "| ⚠ 2 | ImageNet-1K top-1, bidirectional fine-tune | ViT-B | 83.8 |" in markdown


def test_report_before_any_run(tmp_path: Path) -> None:
    """No runs, no data: every row says "not run" and the figures section says what is missing."""
    (tmp_path / "params.yaml").write_text(
        f"runs: {tmp_path}/runs\nresults: {tmp_path}/results\ndata: {{root: {tmp_path}}}\n"
    )
    assert nepa_main(["report", "--params", str(tmp_path / "params.yaml")]) == 0
    html = (tmp_path / "results/report.html").read_text()
    frames = parsed_tables(html)
    rows = pd.concat([next(f for f in frames if "Ours" in f.columns),
                      next(f for f in frames if "Ours: fine-tune top-1" in f.columns).rename(
                          columns={"Ours: fine-tune top-1": "Ours"})], ignore_index=True)  # fmt: skip
    assert len(rows) == len(ROWS) and set(rows["Ours"]) == {"not run"} and set(rows["row_class"]) == {"notrun"}
    assert "No pretraining curve" in html and "is not prepared" in html and "data:image/png" not in html


def test_report_renders_in_chromium(tree: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
         (tree / "results/report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (4000, 1280)
    assert pixels.std() > 20  # text, tables and figures, not a blank page
    assert (pixels < 128).mean() > 0.01  # a fair share of dark pixels: the page drew its content


def test_attention_maps_are_the_models_own() -> None:
    """The recomputed last-block weights, applied to v, give what the block's fused attention computed."""
    torch.manual_seed(0)
    model = models.create("nepa_tiny_patch4_32", **SMALL_MODEL).eval()
    images = torch.randn(2, 3, 32, 32)
    attn = model.blocks[-1].attn
    seen: list[tuple] = []
    handles = [attn.register_forward_pre_hook(lambda _, args: seen.append(args)),
               attn.proj.register_forward_hook(lambda _, args, out: seen.append(args[0]))]  # fmt: skip
    for causal in (True, False):
        seen.clear()
        attention, _, _ = maps.look(model, images, causal)
        x, _, _ = seen[0]
        B, T, D = x.shape
        v = attn.qkv(x).view(B, T, 3, attn.num_heads, D // attn.num_heads)[:, :, 2].transpose(1, 2)
        weights = maps.attention_weights(attn, *seen[0])
        torch.testing.assert_close((weights @ v).transpose(1, 2).reshape(B, T, D), seen[-1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(attention.sum(-1), torch.ones(B, T))
        assert bool((attention[:, 0, 1:] == 0).all()) == causal  # the CLS sees only itself under the causal mask
    for handle in handles:
        handle.remove()


def test_full_scale_rows_compare_in_value() -> None:
    """A full-scale ViT-B run on the paper's schedule gets a difference; one on another schedule does not."""
    provenance = dict.fromkeys(("recipe", "params_sha256", "checkpoint_sha256", "git_commit", "hardware", "hours",
                                "torch"), None)  # fmt: skip
    records = [
        ("base-nepa", "finetune", "val_top1", 83.5),
        ("base-nepa", "pretrain", "steps", 499_200.0),
        ("base-nepa_50k", "finetune", "val_top1", 77.0),  # 1a's baseline, stopped short of its schedule
        ("base-nepa_50k", "pretrain", "steps", 40_000.0),
        ("base-no_causal", "finetune", "val_top1", 74.0),
        ("base-no_causal", "pretrain", "steps", 50_000.0),
    ]
    metrics = pd.DataFrame([dict(run=r, size=r.split("-", 1)[0], variant=r.split("-", 1)[1], seed=0,
                                 init="" if s == "pretrain" else "pretrained", stage=s, metric=m, value=v,
                                 scale="full", source=f"{r}/{s}", **provenance)
                            for r, s, m, v in records])  # fmt: skip
    ev = tables.Evidence(metrics, {}, chance=0.1)
    frame, classes = tables.paper_table(ev, ("2", "1a"))
    by_key = dict(zip([r.key for r in ROWS if r.table in ("2", "1a")], frame.to_dict("records"), strict=True))
    assert by_key["t2-bi-b"]["Δ ours − paper"] == "-0.30"
    assert by_key["1a-no-causal"]["Δ ours − paper"] == "+0.40"
    assert by_key["1a-full"]["Δ ours − paper"] == "n/a: pretrained 40000 steps, the paper 50000"
    assert by_key["1a-no-causal"]["Direction"] == "paper 73.6 < 76.8 (full NEPA) · ours 74.00 < 77.00 ? one seed"
    assert by_key["t2-bi-l"]["Ours"] == "not run" and classes[1] == "notrun"
