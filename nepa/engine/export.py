"""`nepa export`: the latest pretraining checkpoint's weights as a model folder.

EMA weights by default (what the paper's downstream results use), or the online weights
(`--weights online`); the card says which, with the step, the data and the params hash. The nepa format
(model.safetensors with its config + config.json + README.md) loads with
`timm.create_model(name, pretrained=".../model.safetensors")`; `--format official` writes the released
checkpoints' layout (SixAILab/nepa-*), which `nepa import-official` reads back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from nepa import layout
from nepa.config import Params
from nepa.engine.checkpoint import EMA_FILE, latest_checkpoint, online_weights, read_state
from nepa.engine.pretrain import stage_folder
from nepa.errors import UserError
from nepa.models import NepaConfig
from nepa.models.weights import write_model_dir
from nepa.official import write_official


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        "--out", type=Path, help="output folder (default: {runs}/{run}/export, official: …/export/official)"
    )


def main(args: argparse.Namespace, params: Params) -> int:
    folder = stage_folder(params) / layout.CHECKPOINTS
    latest = latest_checkpoint(folder)
    if latest is None:
        raise UserError(f"{folder}: no checkpoint; run `nepa pretrain` with the same params first")
    state = read_state(latest)
    if args.weights == "ema":
        if not (latest / EMA_FILE).is_file():
            raise UserError(f"{latest}: no EMA weights (pretrain.ema_decay was off); export with --weights online")
        weights = load_file(latest / EMA_FILE)
    else:
        weights = online_weights(latest)
    cfg = NepaConfig(**json.loads(state.card["nepa_config"]))
    export = Path(layout.stage_dir(params.runs, params.run_name, layout.EXPORT))
    out = args.out or (export / "official" if args.format == "official" else export)
    if args.format == "official":
        write_official(weights, cfg, out)
    else:
        card = {
            "source": f"nepa pretrain checkpoint {latest}",
            "weights": args.weights,
            "step": str(state.step),
            "data": state.card["data"],
            "params_sha256": state.card["params_sha256"],
        }
        write_model_dir(out, weights, cfg, **card)
    print(f"wrote {out} ({args.weights} weights of {latest.name}, {args.format} format)")
    return 0
