"""`nepa export`: a stage's latest checkpoint as a model folder — the pretrained backbone, or a fine-tuned classifier.

    --stage pretrain  (default)  {runs}/{run}/pretrain   ->  {runs}/{run}/export           (what downstream reads)
    --stage finetune             {runs}/{run}/finetune   ->  {runs}/{run}/finetune/export  (+ its class names)

EMA weights by default (what the paper's downstream results use), or the online weights (`--weights online`); the
card says which, with the step, the data and the params hash. `--from DIR` reads another run folder of the stage
(e.g. `…/finetune-random`, or one written with `--out`). The nepa format (model.safetensors with its config, and a
classifier's class names, + config.json + README.md) loads with `timm.create_model(name, pretrained=".../model.
safetensors")`; `--format official` writes the released checkpoints' layout (SixAILab/nepa-*: ViTNepaForPreTraining,
or ViTNepaForImageClassification with id2label), which `nepa import-official` reads back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

from nepa import layout
from nepa.config import Params
from nepa.engine.checkpoint import EMA_FILE, TrainState, latest_checkpoint, online_weights, read_state
from nepa.errors import UserError, require_file
from nepa.eval.finetune import CLASSES_FILE
from nepa.models import NepaConfig
from nepa.models.weights import write_model_dir
from nepa.official import write_official

STAGES = ("pretrain", "finetune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=STAGES, default="pretrain", help="whose model (default: %(default)s)")
    parser.add_argument(
        "--weights",
        choices=["ema", "online"],
        default="ema",
        help="the latest checkpoint's EMA weights (what downstream stages use) or its online weights "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--format",
        choices=["nepa", "official"],
        default="nepa",
        help="nepa: model.safetensors + config.json + README.md, loaded by timm.create_model(name, "
        "pretrained=FILE); official: the released SixAILab/nepa-* layout (default: %(default)s)",
    )
    parser.add_argument(
        "--from", dest="source", type=Path, metavar="DIR", help="the stage's run folder (default: {runs}/{run}/STAGE)"
    )
    where = "default: {runs}/{run}/export, a fine-tune's {runs}/{run}/finetune/export; official: …/official in it"
    parser.add_argument("--out", type=Path, help=f"output folder ({where})")


def weights_of(latest: Path, which: str) -> dict[str, Tensor]:
    if which == "online":
        return online_weights(latest)
    if not (latest / EMA_FILE).is_file():
        raise UserError(f"{latest}: no EMA weights (the stage's ema_decay was off); export with --weights online")
    return load_file(latest / EMA_FILE)


def class_names(folder: Path, state: TrainState) -> list[str]:
    """The fine-tune's class names by output index, from the classes file it wrote, checked against its card."""
    fix = f"`nepa finetune` writes it beside checkpoints/: restore it, or run the fine-tune again into {folder}"
    path = require_file(folder / CLASSES_FILE, "the fine-tune's class names", fix)
    if hashlib.sha256(path.read_bytes()).hexdigest() != state.card.get("classes_sha256"):
        raise UserError(f"{path}: not the class list this fine-tune trained with (sha256 differs from its card); {fix}")
    return [c["name"] for c in sorted(json.loads(path.read_text()), key=lambda c: c["index"])]


def main(args: argparse.Namespace, params: Params) -> int:
    folder = args.source or Path(layout.stage_dir(params.runs, params.run_name, args.stage))
    checkpoints = folder / layout.CHECKPOINTS
    latest = latest_checkpoint(checkpoints)
    if latest is None:
        raise UserError(f"{checkpoints}: no checkpoint; run `nepa {args.stage}` with the same params first")
    state = read_state(latest)
    if "nepa_config" not in state.card:
        raise UserError(f"{latest}: its card records no architecture (written by an older nepa); run the stage again")
    cfg = NepaConfig(**json.loads(state.card["nepa_config"]))
    weights = weights_of(latest, args.weights)
    labels = class_names(folder, state) if args.stage == "finetune" else None
    pretrained = Path(layout.stage_dir(params.runs, params.run_name, layout.EXPORT))
    export = pretrained if args.stage == "pretrain" else folder / layout.EXPORT
    out = args.out or (export / "official" if args.format == "official" else export)
    if args.format == "official":
        write_official(weights, cfg, out, label_names=labels)
    else:
        card = {
            "source": f"nepa {args.stage} checkpoint {latest}",
            "weights": args.weights,
            "step": str(state.step),
            "data": state.card["data"],
        }
        card |= {key: state.card[key] for key in ("params_sha256", "init") if key in state.card}
        write_model_dir(out, weights, cfg, label_names=labels, **card)
    print(f"wrote {out} ({args.weights} weights of {args.stage} {latest.name}, {args.format} format)")
    return 0
