"""Loader images per CPU-second and per wall-second on realistic JPEGs: every decode path side by side.

    python benchmarks/loader_throughput.py [--images 1500] [--workers 0 2] [--repeats 3] [--views pretrain finetune]

The workload: crops of real photographs at ImageNet's sizes and qualities (benchmarks/loader_photos.py),
written as an ImageNet tree and prepared by `nepa prepare imagenet` (once as stored, once with
`--reencode-max-side 320`). Contenders, each an epoch of one view at 224 px, batch 64:

  ImageFolder + PIL     torchvision's ImageFolder over the JPEG files with the PIL pipeline: the official path
  shards, decode=pil    nepa's Parquet shards with that same PIL pipeline: the project's loader before this change
  shards, decode=cpu    libjpeg-turbo (simplejpeg), uint8 crop + resize in torch, normalised after collation
  shards 320, cpu       the same on the shards re-encoded at prepare to a 320 px long side (changes the data)
  shards, decode=gpu    nvJPEG on the device, whole batches (only with --device cuda)

Per core: images per CPU-second of the loading process and its DataLoader workers over whole epochs
(start-up included; workers are reaped at an epoch's end, so their time counts). Unlike the wall-clock rate
(steady state, first batch to last) it does not count waiting for a CPU on a shared machine. Medians over
--repeats epochs, the contenders interleaved within each repeat. `--breakdown N` also times each step of one
image, single-threaded, over N images. Writes results/benchmarks/loader_throughput.{json,md}
(loader_throughput_cuda.* with --device cuda).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import PIL
import pyarrow
import pyarrow.parquet as pq
import simplejpeg
import timm
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from nepa.cli import main as nepa_main
from nepa.data import transforms
from nepa.data.loaders import make_loader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_photos import write_imagenet_tree

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE, BATCH, REENCODE_SIDE = 224, 64, 320


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (DataLoader workers, once an epoch ends)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(batches: Iterable, device: torch.device) -> tuple[float, float]:
    """(images per CPU-second over one whole epoch, steady-state wall-clock images/s)."""
    cpu = cpu_seconds()
    it = iter(batches)
    total = len(next(it)[0])
    start, n = time.perf_counter(), 0
    for images, _ in it:
        n += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = n / (time.perf_counter() - start)
    del it
    return (total + n) / (cpu_seconds() - cpu), wall


def machine() -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    modules = (torch, torchvision, timm, pyarrow, PIL, np, simplejpeg)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {m.__name__: m.__version__ for m in modules},
        "os": platform.platform(),
    }


def prepare(raw: Path, root: Path, *extra: str) -> Path:
    """`nepa prepare imagenet` of `raw` into root/shards/imagenet; returns the train split folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text("seed: 0\n")
    sets = ["--params", str(root / "params.yaml"), "--set", f"data.root={root}", "--set", "data.workers=2"]
    assert nepa_main(["prepare", "imagenet", "--src", str(raw), *sets, *extra]) == 0
    return root / "shards/imagenet/train"


def contenders(
    view: str, raw: Path, shards: Path, reencoded: Path, device: torch.device
) -> dict[str, Callable[[int, int], Iterable]]:
    """name -> (workers, epoch) -> one epoch of batches."""
    official = transforms.VIEWS[view](IMAGE_SIZE, decode="pil")

    def folder(w: int, epoch: int) -> DataLoader:
        dataset = ImageFolder(
            str(raw / "train"), loader=lambda p: Path(p).read_bytes(), transform=lambda data: official(data, None)[0]
        )
        return DataLoader(
            dataset,
            batch_size=BATCH,
            shuffle=True,
            drop_last=True,
            num_workers=w,
            generator=torch.Generator().manual_seed(epoch),
        )

    def shard(split: Path, decode: str) -> Callable[[int, int], Iterable]:
        settings = dict(batch_size=BATCH, rank=0, world=1, seed=0, decode=decode, device=device, image_size=IMAGE_SIZE)
        return lambda w, epoch: make_loader(view, split, epoch=epoch, num_workers=w, **settings)

    out = {
        "ImageFolder + PIL (official path)": folder,
        "shards, decode=pil (before)": shard(shards, "pil"),
        "shards, decode=cpu": shard(shards, "cpu"),
        f"shards re-encoded {REENCODE_SIDE} px, decode=cpu": shard(reencoded, "cpu"),
    }
    if device.type == "cuda" and view == "pretrain":
        out["shards, decode=gpu"] = shard(shards, "gpu")
    return out


def breakdown(split: Path, count: int) -> dict[str, float]:
    """Milliseconds of CPU per image for each step, one thread, over `count` images of the split."""
    files = sorted(split.glob("*.parquet"))
    shard = pq.ParquetFile(files[0], memory_map=True)
    rows = min(count, shard.metadata.num_rows)
    datas = [shard.read_row_group(i, columns=["image"])["image"][0].as_py() for i in range(rows)]
    pil_images = [transforms.open_rgb(d) for d in datas]
    pixels = [transforms.decode_rgb(d) for d in datas]
    boxes = [transforms.crop_box(p.shape[1], p.shape[2], (0.08, 1.0)) for p in pixels]
    crops = [transforms.resized_crop(p, b, IMAGE_SIZE) for p, b in zip(pixels, boxes, strict=True)]
    pil_crops = [Image.fromarray(c.permute(1, 2, 0).numpy()) for c in crops]
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(transforms.MEAN, transforms.STD)])

    def scaled(i: int, eighths: int) -> dict[str, int]:
        """simplejpeg picks the smallest libjpeg-turbo scale that keeps these sizes: here eighths/8."""
        return {"min_height": -(-pixels[i].shape[1] * eighths // 8), "min_width": -(-pixels[i].shape[2] * eighths // 8)}

    steps: dict[str, Callable[[int], object]] = {
        "shard read (one row group, Arrow)": lambda i: shard.read_row_group(i, columns=["image", "label"]),
        "JPEG header (simplejpeg)": lambda i: transforms.header(datas[i]),
        "decode, PIL (Image.open + convert RGB)": lambda i: transforms.open_rgb(datas[i]),
        "decode, simplejpeg (libjpeg-turbo)": lambda i: transforms.decode_rgb(datas[i]),
        "decode, simplejpeg, DCT-scaled to 3/4": lambda i: simplejpeg.decode_jpeg(datas[i], **scaled(i, 6)),
        "decode, simplejpeg, DCT-scaled to 1/2": lambda i: simplejpeg.decode_jpeg(datas[i], **scaled(i, 4)),
        "crop + resize 224, PIL bilinear": lambda i: pil_images[i].resize(
            (IMAGE_SIZE, IMAGE_SIZE),
            Image.Resampling.BILINEAR,
            box=(boxes[i][1], boxes[i][0], boxes[i][1] + boxes[i][3], boxes[i][0] + boxes[i][2]),
        ),
        "crop + resize 224, torch uint8 antialiased bilinear": lambda i: transforms.resized_crop(
            pixels[i], boxes[i], IMAGE_SIZE
        ),
        "ToTensor + Normalize, PIL 224 image": lambda i: to_tensor(pil_crops[i]),
        "normalize, uint8 224 image (torch)": lambda i: transforms.normalize(crops[i]),
    }
    out = {}
    for name, step in steps.items():
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            for i in range(rows):
                step(i)
            best = min(best, (time.process_time() - start) / rows * 1e3)
        out[name] = round(best, 3)
    return out


def _range(runs: list[list[float]], k: int) -> str:
    return "-".join(f"{f(r[k] for r in runs):.0f}" for f in (min, max))


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| view | loader | workers | images/s per core (per CPU-second) | × ImageFolder+PIL | images/s, wall clock |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['view']} | {r['loader']} | {r['workers']} | {r['images_per_cpu_second']:.0f} "
            f"({_range(r['runs'], 0)}) | {r['ratio_per_cpu_second']:.2f} | "
            f"{r['images_per_second_wall']:.0f} ({_range(r['runs'], 1)}) |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--views", nargs="+", default=["pretrain", "finetune"], choices=["pretrain", "finetune"])
    parser.add_argument("--breakdown", type=int, default=300, metavar="N", help="images timed per step (0: off)")
    parser.add_argument("--device", default="cpu", help="where batches are delivered (cuda adds decode=gpu)")
    parser.add_argument("--out", type=Path, default=ROOT / "results/benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per decoding process, as in DataLoader workers
    device = torch.device(args.device)
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "imagenet"
        start = time.perf_counter()
        made = write_imagenet_tree(raw, args.images)
        made["write_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        shards = prepare(raw, Path(tmp) / "stored")
        made["prepare_s"] = round(time.perf_counter() - start, 1)
        reencoded = prepare(raw, Path(tmp) / "reencoded", "--reencode-max-side", str(REENCODE_SIDE))
        made["reencoded_mean_kb"] = sum(p.stat().st_size for p in reencoded.glob("*.parquet")) / args.images / 1024
        runs: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for view in args.views:
            loaders = contenders(view, raw, shards, reencoded, device)
            for repeat in range(args.repeats):
                for w in args.workers:
                    for name, build in loaders.items():
                        result = measure(build(w, repeat), device)
                        runs.setdefault((view, name, w), []).append(result)
                        print(
                            f"{view:8s} {name:40s} workers={w}: {result[0]:6.1f} img/CPU-s, {result[1]:6.1f} img/s",
                            flush=True,
                        )
        steps = breakdown(shards, args.breakdown) if args.breakdown else {}
    rows = []
    for (view, name, w), rs in runs.items():
        baseline = statistics.median(r[0] for r in runs[(view, "ImageFolder + PIL (official path)", w)])
        per_cpu = statistics.median(r[0] for r in rs)
        rows.append(
            {
                "view": view,
                "loader": name,
                "workers": w,
                "images_per_cpu_second": round(per_cpu, 1),
                "ratio_per_cpu_second": round(per_cpu / baseline, 2),
                "images_per_second_wall": round(statistics.median(r[1] for r in rs), 1),
                "runs": [[round(x, 1) for x in r] for r in rs],
            }
        )
    result = {
        "benchmark": "loader throughput, realistic JPEGs, pretraining (RandomResizedCrop 224 bilinear + flip) and "
        "fine-tuning (timm: RandomResizedCrop bicubic, flip, RandAugment, random erasing) views",
        "command": "python " + " ".join(sys.argv),
        "workload": {**made, "batch_size": BATCH, "image_size": IMAGE_SIZE, "device": str(device)},
        "machine": host,
        "results": rows,
        "breakdown_ms_per_image": steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "loader_throughput" + ("" if device.type == "cpu" else f"_{device.type}")  # a GPU run keeps the CPU table
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    lines = [
        "# Loader throughput on realistic JPEGs",
        "",
        f"{m['cpu']}, {m['cores']} cores (shared; load average at start {m['load_average_at_start'][0]:.2f}), "
        f"1 torch thread per process, {m['date']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        f"Workload: {made['images']} crops of real photographs (benchmarks/loader_photos.py), mean "
        f"{made['mean_megapixels']:.3f} MP and {made['mean_kb']:.1f} KB as stored ({made['reencoded_mean_kb']:.1f} KB "
        f"re-encoded at {REENCODE_SIDE} px), prepared by `nepa prepare imagenet`; 224 px, batch {BATCH}, delivered "
        f"to {device}; median of {args.repeats} epochs (range in brackets). Per core: images per CPU-second of "
        "the loading processes over whole epochs; wall clock: steady state, on a machine shared with other jobs. "
        f"Produced by `{result['command']}`.",
        "",
        *table(rows),
    ]
    if steps:
        lines += [
            "",
            f"Where an image's time goes (ms of CPU per image, one thread, best of 3 over {args.breakdown} "
            "images of one shard):",
            "",
            "| step | ms |",
            "|---|---:|",
            *(f"| {k} | {v:.3f} |" for k, v in steps.items()),
        ]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
