"""What the downstream verbs share: the backbone they start from, the shards they read, where they write, the
engine config they train with (its model card and resume key).

The backbone is the run's EMA export, `{runs}/{size}-{variant}/export/model.safetensors` (`nepa export`),
by default; `--init PATH` takes another nepa model file (e.g. `nepa import-official` of the released
weights) and `--init random` the same architecture from scratch, the baseline a pretrained backbone must beat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

from nepa import layout
from nepa.config import FinetuneParams, Params, SegmentParams
from nepa.engine.checkpoint import resume_key
from nepa.engine.trainer import TrainConfig
from nepa.errors import require_file
from nepa.models import NepaConfig, NepaViT, create
from nepa.provenance import sha256_file

RANDOM = "random"
PREPARE = {"imagenet": "nepa prepare imagenet", "ade20k": "nepa prepare ade20k"}


def add_init_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init",
        metavar="PATH|random",
        help="backbone weights: a nepa .safetensors, or 'random' for the from-scratch baseline "
        "(default: the run's export, {runs}/{size}-{variant}/export/model.safetensors)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: {runs}/{size}-{variant}/VERB[-random])")


class Inputs(NamedTuple):
    """What a downstream verb starts from, all checked before a process group or a model exists."""

    weights: Path | None  # the backbone's file, None for random initialisation
    train: Path  # the prepared split folders
    val: Path
    folder: Path  # where the verb writes


def inputs(args: argparse.Namespace, params: Params, verb: str, dataset: str) -> Inputs:
    """A downstream verb's backbone (--init), its prepared splits of `dataset`, and its output folder (--out)."""
    weights = init_weights(params, args.init)
    train, val = (split_dir(params, dataset, split) for split in layout.SPLITS[dataset])
    return Inputs(weights, train, val, output_folder(params, verb, args.init, args.out))


def init_weights(params: Params, init: str | None) -> Path | None:
    """The model file to start from, checked to exist; None for random initialisation."""
    if init == RANDOM:
        return None
    # a fine-tune-only variant starts from its baseline's export (params.pretrained_run)
    export = layout.stage_dir(params.runs, params.pretrained_run, layout.EXPORT)
    path = Path(init) if init else Path(export) / layout.MODEL_FILE
    fix = "run `nepa pretrain` then `nepa export` for this size and variant, or pass --init PATH (or --init random)"
    return require_file(path, "pretrained model file", fix)


def output_folder(params: Params, verb: str, init: str | None, out: str | None) -> Path:
    """Where the verb writes; a from-scratch run gets its own folder, so it never meets a pretrained one's."""
    folder = layout.stage_dir(params.runs, params.run_name, f"{verb}-{RANDOM}" if init == RANDOM else verb)
    return Path(out) if out else Path(folder)


def build(params: Params, weights: Path | None, **overrides: Any) -> NepaViT:
    """The backbone: a file's own architecture, or params.model's for random init, then `overrides`."""
    architecture = {} if weights else params.model.architecture()
    return create(params.model.timm_name, pretrained=weights or False, **{**architecture, **overrides})


def split_dir(params: Params, dataset: str, split: str) -> Path:
    """A prepared split folder, {data.root}/shards/{dataset}/{split}, checked to have its manifest."""
    folder = Path(layout.split_dir(params.data.root, dataset, split))
    fix = f"run `nepa prepare embedded && {PREPARE[dataset]}` (embedded scale) or `{PREPARE[dataset]}`"
    require_file(folder.parent / "manifest.json", f"prepared {dataset} shards", fix)
    return folder


def digest(weights: Path | None) -> str:
    """The backbone's sha256 (for the resume key), or RANDOM for random initialisation."""
    return sha256_file(weights) if weights else RANDOM


def train_config(
    section: FinetuneParams | SegmentParams,
    params: Params,
    verb: str,
    weights: Path | None,
    train: Path,
    folder: Path,
    architecture: NepaConfig,
) -> TrainConfig:
    """The engine's config of a downstream verb from its params `section`: its model card (the backbone it starts
    from, the data, the architecture as built: `nepa export` rebuilds the model from it) and a resume key over the
    section, the backbone, the split's manifest and the architecture, so a checkpoint of other params, weights or
    data is never resumed (nor one written before the card held the architecture, whose optimizer groups nepa
    built otherwise)."""
    nepa_config = json.dumps(dataclasses.asdict(architecture))
    card = {
        "init": str(weights or RANDOM),
        "data": str(train),
        "model": params.model.timm_name,
        "nepa_config": nepa_config,
    }
    key = resume_key(params, (verb,), digest(weights), sha256_file(train.parent / "manifest.json"), nepa_config)
    return TrainConfig.from_params(
        section, folder=folder, seed=params.seed, name=f"nepa {verb}", card=card, resume_key=key
    )
