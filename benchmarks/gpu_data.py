"""A small ImageNet-layout set of realistic JPEGs, made on the spot and prepared by `nepa prepare imagenet`.

    python benchmarks/gpu_data.py ROOT --images 2000        # -> ROOT/raw/{train,val}/..., ROOT/shards/imagenet/

For the GPU suite's engine and end-to-end runs (benchmarks/gpu_suite.sh), on a machine with no network and no
dataset. The images come from the realistic-JPEG generator of the loader benchmarks (benchmarks/loader_photos.py:
crops of the photographs scikit-image ships, at ImageNet's sizes and qualities). HOOK: where that module or
scikit-image is missing, smooth random images at the same sizes stand in, and the printed record says so (their
decode cost is not a photograph's). Prints one JSON line: what was made, and the prepared train split.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

CLASSES = 10


def smooth_jpeg(rng: np.random.Generator) -> bytes:
    """A blurred random colour field, 500 x 375 (ImageNet's most common size), JPEG quality 90-99."""
    small = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=int(rng.integers(90, 100)))
    return out.getvalue()


def smooth_tree(root: Path, count: int, seed: int = 0) -> dict[str, float]:
    """root/{train,val}/<wnid>/*.JPEG: `count` train images in CLASSES classes and one val image per class."""
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(count + CLASSES):
        split, label = ("train", i % CLASSES) if i < count else ("val", i - count)
        folder = root / split / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = smooth_jpeg(rng)
        (folder / f"n{label:08d}_{i}.JPEG").write_bytes(data)
        sizes.append(len(data))
    return {"images": count, "mean_kb": float(np.mean(sizes)) / 1024}


def write_tree(root: Path, count: int) -> dict[str, object]:
    try:
        from loader_photos import write_imagenet_tree  # the loader benchmarks' generator (benchmarks/)

        return {"source": "photographs (benchmarks/loader_photos.py)", **write_imagenet_tree(root, count)}
    except ImportError as e:  # HOOK: the photo generator (or scikit-image) is not here
        return {"source": f"smooth random images, NOT photographs ({e})", **smooth_tree(root, count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--images", type=int, default=2000, help="train images")
    parser.add_argument("--workers", type=int, default=0, help="prepare workers (0: every core)")
    args = parser.parse_args()
    start = time.perf_counter()
    made = write_tree(args.root / "raw", args.images)
    made["generate_s"] = round(time.perf_counter() - start, 1)
    (args.root / "params.yaml").write_text("seed: 0\n")
    sets = [f"data.root={args.root}", f"data.workers={args.workers}", "data.images_per_shard=500"]
    start = time.perf_counter()
    command = [sys.executable, "-m", "nepa.cli", "prepare", "imagenet", "--src", str(args.root / "raw")]
    command += ["--params", str(args.root / "params.yaml"), *(x for s in sets for x in ("--set", s))]
    subprocess.run(command, check=True)
    made |= {"prepare_s": round(time.perf_counter() - start, 1), "split": str(args.root / "shards/imagenet/train")}
    print(json.dumps(made), flush=True)


if __name__ == "__main__":
    main()
