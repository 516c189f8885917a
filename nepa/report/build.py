"""The `nepa report` verb: gathers the runs, renders tables, figures and maps, writes the documents."""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors import safe_open

from nepa.config import SIZES, Params, load_params
from nepa.data.loaders import read_split
from nepa.errors import UserError
from nepa.models import create
from nepa.provenance import git_commit
from nepa.report import environment, figures, gather, maps, tables
from nepa.report.document import Section, markdown, to_html
from nepa.report.paper import ABLATION_TABLES, HEADLINE_TABLES

TITLE = "NEPA reproduction report"
READING = (
    "Paper: the paper's number, or what it saw instead (fails, collapses). Ours: the metric of the run named in "
    "Run (fine-tuned top-1 of the EMA weights, probe top-1, mIoU in %). Δ is shown only where the run is "
    "comparable: the paper's model at full scale on the paper's schedule. Shaded rows (⚠ in Markdown) ran at "
    "reduced scale (scale: embedded, a tiny model on Fashion-MNIST) and compare in direction only: Direction "
    "gives the paper's order of two rows beside ours (✓ same, ✗ opposite), or whether a collapse or failure "
    "happened. Grey rows: no run yet. Checkpoint: sha256 of the model file the stage started from; Params: "
    "sha256 of the resolved params; Hours: the stage's training time."
)


def chance_level(split: Path) -> float | None:
    """Top-1 of guessing on the prepared classification data, in percent; None before `nepa prepare`."""
    try:
        return 100 / len(read_split(split)[0]["classes"])
    except UserError:
        return None


def map_figures(
    args: argparse.Namespace, ev: tables.Evidence, runs: Path, val: Path, folder: Path
) -> list[tuple[Path, str]]:
    """Attention and similarity maps of every exported model of the `--maps` variants, on `val` images."""
    found = []
    for run in sorted(ev.runs):
        size, variant = run.split("-", 1)
        model_file = runs / run / "export" / "model.safetensors"
        if variant not in args.maps or not model_file.is_file():
            continue
        params = load_params(args.params, (*args.overrides, f"variant={variant}"), size=size)
        model = create(SIZES[size].timm_name, pretrained=model_file).eval()
        with safe_open(str(model_file), framework="pt") as f:  # the export's card: which weights it holds
            weights = (f.metadata() or {}).get("weights", "unrecorded")
        images = maps.validation_images(val, args.images, model.cfg.img_size, params.seed, params.data.verify_shards)
        attention = "causal" if params.objective.causal else "bidirectional"
        title = f"{run}: exported model ({weights} weights), {attention} attention as in pretraining"
        png = maps.maps_figure(model, images, params.objective.causal, title, folder / f"maps_{run}.png")
        found.append((png, f"{run}: last-block attention of two query patches and the similarity of a prediction "
                           "to every patch's input embedding, on validation images"))  # fmt: skip
    return found


def build(args: argparse.Namespace, params: Params, folder: Path) -> list[Section]:
    runs = Path(params.runs)
    metrics = gather.metrics_table(runs)
    curves = {stage: gather.curves(runs, stage) for stage in ("pretrain", "finetune", "segment")}
    val = Path(params.data.root) / "shards" / "imagenet" / "val"
    ev = tables.Evidence(metrics, curves, chance_level(val))
    headline, headline_classes = tables.paper_table(ev, HEADLINE_TABLES)
    ablations, ablation_classes = tables.paper_table(ev, ABLATION_TABLES)
    for name, frame in (("paper_tables", headline), ("paper_ablations", ablations), ("metrics", metrics)):
        frame.to_csv(folder / f"{name}.csv", index=False)
    figs, notes = [], []
    if curves["pretrain"]:
        caption = "Pretraining loss of each variant run (paper Fig. 7); dotted: −1, where no stop-grad collapses"
        figs.append((figures.pretrain_loss(curves["pretrain"], folder / "pretrain_loss.png"), caption))
    else:
        notes.append(f"No pretraining curve under {runs} yet.")
    if png := figures.finetune_accuracy(curves["finetune"], folder / "finetune_accuracy.png"):
        figs.append((png, "Fine-tuning: validation top-1 of the online and the EMA weights per epoch"))
    else:
        notes.append("No fine-tuning accuracy curve yet.")
    if ev.chance is None:  # the val split is not prepared: no images to map
        notes.append(f"No attention or similarity maps: {val.parent} is not prepared (nepa prepare imagenet).")
    else:
        figs += map_figures(args, ev, runs, val, folder)
    scratch = tables.scratch_table(ev)
    return [
        Section("How to read the tables", READING),
        Section("Headline results (paper Tables 2, 3 and 6)", table=headline, row_classes=headline_classes),
        Section("Ablations (paper Table 1a–1e, appendix)", table=ablations, row_classes=ablation_classes),
        Section("Baselines (the paper's numbers, for context)", table=tables.baselines_table()),
        *([Section("Pretrained backbone vs from scratch (ours)", table=scratch)] if len(scratch) else []),
        Section("Figures", " ".join(notes), figures=figs),
        Section("Environment", table=environment.environment(runs, Path(params.launcher.folder), metrics)),
        Section("Every recorded metric", table=tables.metrics_listing(ev)),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--maps", nargs="*", default=["nepa"], metavar="VARIANT",
        help="variants whose exported models get attention/similarity maps (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--images", type=int, default=3, help="validation images per map figure (default: %(default)s)")


def main(args: argparse.Namespace, params: Params) -> int:
    results = Path(params.results)
    folder = results / "report"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.png"), *folder.glob("*.csv")]:  # the folder is this verb's output: no leftovers
        stale.unlink()
    sections = build(args, params, folder)
    meta = (f"From {params.runs}/ at commit {git_commit()}; params: recipe {params.recipe}, scale {params.scale}, "
            f"sizes {', '.join(params.sizes)}, variants {', '.join(params.variants)}.")  # fmt: skip
    (results / "report.md").write_text(markdown(TITLE, meta, sections, results))
    (results / "report.html").write_text(to_html(TITLE, meta, sections))
    print(f"nepa report: wrote {results / 'report.html'}, {results / 'report.md'} and {folder}/")
    return 0
