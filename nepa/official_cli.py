"""`nepa import-official DIR OUT`: a released SixAILab checkpoint -> a nepa model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from nepa.models.weights import write_model_dir
from nepa.official import read_official


def main(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    parser.add_argument("src", type=Path, help="folder with the official config.json and model.safetensors")
    parser.add_argument("out", type=Path, help="output folder: model.safetensors + config.json + README.md")
    args = parser.parse_args(argv)
    state, cfg = read_official(args.src)
    write_model_dir(args.out, state, cfg, source=f"official checkpoint {args.src.resolve()}", weights="as released")
    print(f"wrote {args.out / 'model.safetensors'} ({sum(v.numel() for v in state.values()):,} parameters)")
    return 0
