"""Loader images/s per CPU core, pretraining view at 224 px: our Parquet shards vs a plain ImageFolder loader.

    python benchmarks/loader_throughput.py [--images 2048] [--workers 0 2] [--repeats 3]

The workload: real Fashion-MNIST images (the first --images of the train split), upsampled to 256x256 RGB
JPEGs (bicubic, quality 90) in a temporary ImageNet-style folder, so that RandomResizedCrop(224) + flip +
normalise does a 224 px job. The same JPEGs are then sharded by `nepa prepare imagenet`'s code. Both loaders
decode with PIL and run the same transform (nepa.data.transforms.pretrain, the official pipeline); the
baseline is torchvision's ImageFolder with a shuffling DataLoader, the path the official code takes.
Upsampled grey items are smoother and smaller (~6 KB) than ImageNet photos (~110 KB, ~400x350): decoding
is cheaper here than on ImageNet, so the per-image overheads of the two loaders weigh more than they would.

Per core: images per CPU-second, the CPU time of the loading process and its DataLoader workers over a
whole epoch (start-up included; workers are reaped at the epoch's end, so their time is counted). Unlike
wall-clock rates it does not count time spent waiting for the CPU on a shared machine (contention still
costs some cache). The wall-clock rate (steady state: from the first batch to the last) is reported beside
it. Medians over --repeats epochs; the two loaders alternate. Writes results/benchmarks/loader_throughput.*.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import pyarrow
import timm
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from nepa.config import DataParams
from nepa.data.embedded import find_fashion_mnist, load_split, wnid
from nepa.data.loaders import make_loader
from nepa.data.shards import prepare_shards
from nepa.data.transforms import pretrain

ROOT = Path(__file__).resolve().parents[1]
JPEG_SIDE, IMAGE_SIZE = 256, 224


def write_jpegs(out: Path, count: int) -> None:
    """ImageNet-style train/ (+ a small val/, which the ImageNet layout needs) of upsampled FMNIST JPEGs."""
    images, labels = load_split(find_fashion_mnist(DataParams().fashion_mnist_dir), "train", count)
    for i, (item, label) in enumerate(zip(images, labels, strict=True)):
        for split in ("train", "val") if i < 10 else ("train",):
            folder = out / split / wnid(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            big = Image.fromarray(item).convert("RGB").resize((JPEG_SIDE, JPEG_SIDE), Image.Resampling.BICUBIC)
            big.save(folder / f"{wnid(int(label))}_{i}.JPEG", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (DataLoader workers, once an epoch ends)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(build: Callable[[], DataLoader]) -> tuple[float, float]:
    """(images per CPU-second over one whole epoch, steady-state wall-clock images/s)."""
    cpu = cpu_seconds()
    it = iter(build())
    total = len(next(it)[0])
    start, n = time.perf_counter(), 0
    for images, _ in it:
        n += len(images)
    wall = n / (time.perf_counter() - start)
    del it  # an exhausted iterator has joined its workers already; this makes it explicit
    return (total + n) / (cpu_seconds() - cpu), wall


def _range(row: dict, k: int) -> str:
    return "-".join(f"{f(r[k] for r in row['runs']):.0f}" for f in (min, max))


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "load_average_at_start": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {m.__name__: m.__version__ for m in (torch, torchvision, timm, pyarrow, PIL, np)},
        "os": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results/benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per decoding process, as in DataLoader workers
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        raw, shards = Path(tmp) / "imagenet", Path(tmp) / "shards"
        start = time.perf_counter()
        write_jpegs(raw, args.images)
        jpeg_s = time.perf_counter() - start
        start = time.perf_counter()
        prepare_shards("imagenet", raw, shards, images_per_shard=1000, max_side=None, skip_bad=False, workers=0)
        shard_s = time.perf_counter() - start
        jpeg_kb = sum(p.stat().st_size for p in (raw / "train").rglob("*.JPEG")) / args.images / 1024
        view = pretrain(IMAGE_SIZE)
        loaders: dict[str, Callable[[int, int], DataLoader]] = {
            "nepa shards (make_loader)": lambda w, epoch: make_loader(
                "pretrain", shards / "train", batch_size=args.batch, rank=0, world=1, seed=0, epoch=epoch,
                num_workers=w, image_size=IMAGE_SIZE,
            ),
            "ImageFolder + PIL (official path)": lambda w, epoch: DataLoader(
                ImageFolder(str(raw / "train"), transform=lambda im: view(im, None)[0]),
                batch_size=args.batch, shuffle=True, drop_last=True, num_workers=w,
                generator=torch.Generator().manual_seed(epoch),
            ),
        }  # fmt: skip
        runs: dict[str, dict[int, list[tuple[float, float]]]] = {n: {w: [] for w in args.workers} for n in loaders}
        for epoch in range(args.repeats):
            for w in args.workers:
                for name, build in loaders.items():
                    runs[name][w].append(measure(lambda: build(w, epoch)))  # noqa: B023  (called at once)
                    per_cpu, wall = runs[name][w][-1]
                    print(f"{name:36s} workers={w}: {per_cpu:6.1f} img/CPU-s, {wall:6.1f} img/s", flush=True)
    rows = [
        {"loader": name, "workers": w, "images_per_cpu_second": round(statistics.median(r[0] for r in rs), 1),
         "images_per_second_wall": round(statistics.median(r[1] for r in rs), 1),
         "runs": [[round(x, 1) for x in r] for r in rs]}
        for name, by_workers in runs.items() for w, rs in by_workers.items()
    ]  # fmt: skip
    result = {
        "benchmark": "loader throughput, pretraining view (RandomResizedCrop 224 bilinear + flip + normalise)",
        "workload": {
            "images": args.images,
            "jpeg": f"{JPEG_SIDE}x{JPEG_SIDE} RGB, quality 90, upsampled Fashion-MNIST, {jpeg_kb:.1f} KB average",
            "batch_size": args.batch,
            "write_jpegs_s": round(jpeg_s, 2),
            "prepare_shards_s": round(shard_s, 2),
        },
        "machine": host,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Loader throughput, pretraining view at {IMAGE_SIZE} px",
        "",
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores (shared; load average at start "
        f"{result['machine']['load_average_at_start'][0]:.2f}), {result['machine']['date']}; "
        + ", ".join(f"{k} {v}" for k, v in result["machine"]["versions"].items()) + ".",
        "",
        f"Workload: {result['workload']['jpeg']}; {args.images} images, batch {args.batch}; median of "
        f"{args.repeats} epochs (range in brackets). Per core: images per CPU-second of the loading processes "
        "over whole epochs; wall clock: steady state, on a machine shared with other jobs. "
        "Produced by `benchmarks/loader_throughput.py`.",
        "",
        "| loader | workers | images/s per core (per CPU-second) | images/s, wall clock |",
        "|---|---:|---:|---:|",
        *(f"| {r['loader']} | {r['workers']} | {r['images_per_cpu_second']:.0f} ({_range(r, 0)}) "
          f"| {r['images_per_second_wall']:.0f} ({_range(r, 1)}) |" for r in rows),
    ]  # fmt: skip
    (args.out / "loader_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
