"""The `nepa report` verb: gathers the runs, renders tables, figures and maps, writes the documents."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from nepa.config import SIZES, Params, load_params
from nepa.data.loaders import read_split
from nepa.errors import UserError
from nepa.models import create
from nepa.provenance import git_commit
from nepa.report import environment, figures, gather, maps, tables
from nepa.report.document import Section, markdown, to_html
from nepa.report.gather import RunKey
from nepa.report.paper import ABLATION_TABLES, HEADLINE_TABLES
from nepa.report.spread import CRITERION

TITLE = "NEPA reproduction report"
SIMILARITY_IMAGES = 64  # validation images whose patch embeddings give a pretrained model's target similarity
READING = (
    "Paper: the paper's number, or what it saw instead (fails, collapses). Ours: the metric of every run of the "
    "row's configuration (model size, variant, stage, init), grouped by what each run records, whatever folder "
    "it is in: mean ± sample SD over its seeds (fine-tuned top-1 of the EMA weights, probe top-1, mIoU, in %). "
    "Δ is shown only where the runs are comparable: the paper's model at full scale on the paper's schedule. "
    "Shaded rows (⚠ in Markdown) ran at reduced scale (scale: embedded, a tiny model on Fashion-MNIST) and "
    f"compare in direction only. Direction gives the paper's order of two rows beside ours; {CRITERION}. "
    f"Collapses: every seed ends pretraining at a loss ≤ {tables.COLLAPSE_LOSS} and its input embeddings (the "
    f"targets) have a mean pairwise cosine ≥ {tables.COLLAPSE_SIMILARITY}. Fails: the run stopped on a non-finite "
    "loss, or it is worse than the row it is compared with beyond seed noise; a trivial objective is one whose "
    f"loss is ≤ {tables.TRIVIAL_LOSS} at the first logged step. The compared run's values are printed beside, so "
    "that full NEPA can be seen not to meet these criteria. Grey rows: no run yet. Checkpoint: sha256 of the "
    "model files the stage started from; Params: sha256 of the resolved params; Hours: the stage's own training "
    "time, mean over seeds."
)
SCRATCH = (
    "The same stage, recipe and seeds from the pretrained export and from random initialisation (`--init random`): "
    "what pretraining adds. Pretrained better: ✓ beyond seed noise, by the rule above."
)
ABLATIONS = (
    "Each row beside the full-NEPA row it is compared with (Compared with), with its fine-tune, linear probe and "
    "final pretraining loss over seeds, and each stage's own hours. Direction judges the fine-tune (or the "
    "collapse, or the failure) and then the linear probe of the last embedding against the compared row's; the "
    "paper gives no probe for Table 1, so the order expected of the probe is its fine-tune's. At embedded scale "
    "Table 1's runs, variant and baseline alike, pretrain on one shorter schedule than the embedded default's. "
    "≈ means these runs cannot show the direction: the gap is inside the seed spread."
)


def chance_level(split: Path) -> float | None:
    """Top-1 of guessing on the prepared classification data, in percent; None before `nepa prepare`."""
    try:
        return 100 / len(read_split(split)[0]["classes"])
    except UserError:
        return None


def exports(metrics: pd.DataFrame) -> dict[RunKey, Path]:
    """The exported model of every finished pretraining run: {run folder}/export/model.safetensors."""
    found = {}
    for r in metrics[metrics["stage"] == "pretrain"].drop_duplicates("source").itertuples():
        model_file = Path(r.source).parent.parent / "export" / "model.safetensors"
        if model_file.is_file():
            seed = None if pd.isna(r.seed) else int(r.seed)
            found[RunKey(r.size, r.variant, seed, r.init, r.stage)] = model_file
    return found


def target_similarities(models: dict[RunKey, Path], val: Path, images: int, verify: bool) -> dict[RunKey, float]:
    """Each exported model's target similarity (nepa/report/maps.py) on the first `images` validation images."""
    found = {}
    for key, model_file in models.items():
        model = create(SIZES[key.size].timm_name, pretrained=model_file).eval()
        batch = maps.validation_images(val, images, model.cfg.img_size, 0, verify)
        found[key] = maps.target_similarity(model, batch)
    return found


def map_figures(
    args: argparse.Namespace, models: dict[RunKey, Path], val: Path, folder: Path
) -> list[tuple[Path, str]]:
    """Attention and similarity maps of the exported model of the `--maps` variants (their lowest seed)."""
    found, done = [], set()
    for key, model_file in sorted(models.items(), key=lambda kv: (kv[0].size, kv[0].variant, kv[0].seed or 0)):
        run = f"{key.size}-{key.variant}"
        if key.variant not in args.maps or run in done:
            continue
        done.add(run)
        params = load_params(args.params, (*args.overrides, f"variant={key.variant}"), size=key.size)
        model = create(SIZES[key.size].timm_name, pretrained=model_file).eval()
        with safe_open(str(model_file), framework="pt") as f:  # the export's card: which weights it holds
            weights = (f.metadata() or {}).get("weights", "unrecorded")
        images = maps.validation_images(val, args.images, model.cfg.img_size, params.seed, params.data.verify_shards)
        attention = "causal" if params.objective.causal else "bidirectional"
        title = f"{run} (seed {key.seed}): exported model ({weights} weights), {attention} attention as in pretraining"
        png = maps.maps_figure(model, images, params.objective.causal, title, folder / f"maps_{run}.png")
        found.append((png, f"{run}: last-block attention of two query patches and the similarity of a prediction "
                           "to every patch's input embedding, on validation images"))  # fmt: skip
    return found


def curve_figures(curves: dict[str, figures.Curves], folder: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """The training curves over seeds, and a note for each missing one."""
    figs, notes = [], []
    if curves["pretrain"]:
        caption = ("Pretraining loss of each variant (paper Fig. 7): mean over seeds, band from the lowest to the "
                   "highest seed; dotted: −1, where no stop-grad collapses")  # fmt: skip
        figs.append((figures.pretrain_loss(curves["pretrain"], folder / "pretrain_loss.png"), caption))
    else:
        notes.append("No pretraining curve yet.")
    captions = {
        "finetune": "Fine-tuning: training loss at every logged step and validation top-1 (online, EMA) at each "
        "evaluation, pretrained (solid) against random init (dashed), mean over seeds with a min-max band",
        "segment": "Segmentation: training loss (pixel cross-entropy + 0.4 auxiliary) at every logged step, "
        "pretrained (solid) against random init (dashed), mean over seeds with a min-max band",
    }
    accuracy = {"finetune": ("val_top1_online", "val_top1_ema"), "segment": ()}
    for stage, caption in captions.items():
        png = figures.downstream(curves[stage], folder / f"{stage}_curves.png", stage, accuracy[stage])
        if png:
            figs.append((png, caption))
        else:
            notes.append(f"No {stage} curve yet.")
    return figs, notes


def build(args: argparse.Namespace, params: Params, folder: Path) -> list[Section]:
    runs = Path(params.runs)
    metrics = gather.metrics_table(runs)
    curves = {stage: gather.curves(runs, stage) for stage in ("pretrain", "finetune", "segment")}
    val = Path(params.data.root) / "shards" / "imagenet" / "val"
    chance = chance_level(val)
    models = exports(metrics)
    similarity = {} if chance is None else target_similarities(models, val, SIMILARITY_IMAGES,
                                                                params.data.verify_shards)  # fmt: skip
    ev = tables.Evidence(metrics, curves, chance, similarity)
    headline, headline_classes = tables.paper_table(ev, HEADLINE_TABLES)
    ablations, ablation_classes = tables.ablation_table(ev, ABLATION_TABLES)
    scratch = tables.scratch_table(ev)
    for name, frame in (("paper_tables", headline), ("paper_ablations", ablations), ("pretrained_vs_random", scratch),
                        ("metrics", metrics)):  # fmt: skip
        frame.to_csv(folder / f"{name}.csv", index=False)
    figs, notes = curve_figures(curves, folder)
    if chance is None:  # the val split is not prepared: no images to map
        notes.append(f"No attention or similarity maps: {val.parent} is not prepared (nepa prepare imagenet).")
    else:
        figs += map_figures(args, models, val, folder)
    return [
        Section("How to read the tables", READING),
        Section("Headline results (paper Tables 2, 3 and 6)", table=headline, row_classes=headline_classes),
        *([Section("Pretrained backbone vs random init (ours)", SCRATCH, table=scratch)] if len(scratch) else []),
        Section("Ablations (paper Table 1a–1e, appendix)", ABLATIONS, table=ablations, row_classes=ablation_classes),
        Section("Baselines (the paper's numbers, for context)", table=tables.baselines_table()),
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
