"""`nepa prepare embedded | imagenet | ade20k`: write a dataset into versionable shards.

  nepa prepare embedded            Fashion-MNIST -> {data.root}/raw/{imagenet,ADEChallengeData2016} (real layouts)
  nepa prepare imagenet [--src X]  ImageNet-1K -> {data.root}/shards/imagenet/ (+ manifest.json)
  nepa prepare ade20k [--src X]    ADE20K -> {data.root}/shards/ade20k/

X is any form labs hold, recognised and said in one line: for ImageNet an ImageFolder tree, Kaggle's layout,
the ILSVRC2012 tars with the devkit, or a Hugging Face copy (save_to_disk or Parquet); for ADE20K the
ADEChallengeData2016 folder or zip, or Hugging Face's scene_parse_150 (nepa/data/imagenet_forms.py,
nepa/data/ade20k_forms.py, docs/datasets.md). Archives and tables are read in place: nothing is extracted.
--src defaults to the embedded raw folder at `scale: embedded`, to data.imagenet_src / data.ade20k_src at
`scale: full`. For `embedded`, --src overrides data.fashion_mnist_dir. Re-running is cheap: finished work is
kept (see nepa/data/embedded.py and nepa/data/shards.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nepa.config import Params
from nepa.data.embedded import prepare_embedded
from nepa.data.shards import prepare_shards
from nepa.errors import UserError

RAW = {"imagenet": "imagenet", "ade20k": "ADEChallengeData2016"}  # folder names under {data.root}/raw


def default_src(dataset: str, params: Params) -> Path:
    if params.scale == "embedded":
        src = Path(params.data.root) / "raw" / RAW[dataset]
        if not src.is_dir():
            raise UserError(f"{src}: not found; run `nepa prepare embedded` first (it writes the embedded raw layouts)")
        return src
    src = params.data.imagenet_src if dataset == "imagenet" else params.data.ade20k_src
    if src is None:
        raise UserError(f"scale is full but data.{dataset}_src is not set; point it at the dataset or pass --src")
    return Path(src)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["embedded", "imagenet", "ade20k"])
    parser.add_argument("--src", type=Path, help="the dataset as you hold it: a folder, archive or copy (see below)")
    parser.add_argument("--skip-bad", action="store_true", help="record bad files in the manifest and go on")
    parser.add_argument("--reencode-max-side", type=int, metavar="N", help="shrink images larger than N px")
    parser.epilog = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def main(args: argparse.Namespace, params: Params) -> int:
    start = time.perf_counter()
    if args.dataset == "embedded":
        prepare_embedded(params, str(args.src) if args.src else None)
    else:
        d = params.data
        prepare_shards(
            args.dataset,
            args.src or default_src(args.dataset, params),
            Path(d.root) / "shards" / args.dataset,
            images_per_shard=d.images_per_shard,
            max_side=d.reencode_max_side if args.reencode_max_side is None else args.reencode_max_side,
            skip_bad=args.skip_bad or d.skip_bad,
            workers=d.workers,
            class_index=d.class_index,
        )
    print(f"nepa prepare {args.dataset}: done in {time.perf_counter() - start:.1f} s")
    return 0
