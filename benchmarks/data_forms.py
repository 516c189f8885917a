"""`nepa prepare imagenet` from the ILSVRC2012 tars (read in place) vs from the extracted ImageFolder tree.

    python benchmarks/data_forms.py [--images 2000] [--val 500] [--classes 10] [--workers 1 2] [--repeats 3]

The workload: realistic JPEGs (crops of real photographs at ImageNet's sizes and qualities, loader_photos.py),
written twice: as the distribution tars (ILSVRC2012_img_train.tar of per-class tars, the flat val tar, the
devkit: ilsvrc_archives.py) and as the tree those tars extract to (train/<wnid>/, val/<wnid>/). Each form is
prepared into fresh shards with data.workers = each of --workers, the forms interleaved within each repeat;
the sources sit in the page cache for both (just written), so this compares the CPU work of reading them.

Per core: images per CPU-second of the whole prepare (this process and its pool workers, listing included);
listing: the CPU time of recognising and listing the form (for the tars: their headers), apart.
Extra disk: the peak bytes under the output folder (shards, staged shards, manifest), sampled every 20 ms,
beside what extracting the tars first costs (the tree). Files: on disk per 1,000 images, source and output.
Writes results/benchmarks/data_forms.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ilsvrc_archives import write_ilsvrc2012
from loader_photos import photo_jpeg, photographs
from loader_throughput import cpu_seconds, machine

from nepa.data import imagenet_forms
from nepa.data.shards import write_dataset

ROOT = Path(__file__).resolve().parents[1]


def tree_bytes(folder: Path) -> tuple[int, int]:
    """Bytes and files under `folder` (0, 0 when it is not there)."""
    size = files = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.stat(os.path.join(parent, name)).st_size
                files += 1
            except FileNotFoundError:  # renamed or removed while we looked
                pass
    return size, files


def peak_bytes(folder: Path, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        out.append(tree_bytes(folder)[0])
        time.sleep(0.02)


def write_sources(top: Path, images: int, val: int, classes: int) -> dict[str, object]:
    """The same JPEGs as tars and as a tree; returns what was made."""
    rng = np.random.default_rng(0)
    photos = photographs()
    wnids = [f"n{k:08d}" for k in range(classes)]
    train = {w: [] for w in wnids}
    for i in range(images):
        w = wnids[i % classes]
        train[w].append((f"{w}_{i}.JPEG", photo_jpeg(photos[rng.integers(len(photos))], rng)))
    held = [(wnids[i % classes], photo_jpeg(photos[rng.integers(len(photos))], rng)) for i in range(val)]
    ids = {w: int(k) + 1 for w, k in zip(wnids, rng.permutation(classes), strict=True)}
    write_ilsvrc2012(top / "tars", train, held, ids, {w: f"class {w}" for w in wnids})
    for w, files in train.items():
        (top / "tree/train" / w).mkdir(parents=True)
        for name, data in files:
            (top / "tree/train" / w / name).write_bytes(data)
    for i, (w, data) in enumerate(held):
        (top / "tree/val" / w).mkdir(parents=True, exist_ok=True)
        (top / "tree/val" / w / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(data)
    sizes = [len(d) for files in train.values() for _, d in files]
    pixels = [Image.open(io.BytesIO(d)).size for files in train.values() for _, d in files[:50]]
    return {
        "mean_kb": float(np.mean(sizes)) / 1024,
        "mean_megapixels": float(np.mean([w * h for w, h in pixels])) / 1e6,
    }


def run(src: Path, out: Path, workers: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=peak_bytes, args=(out, stop, samples))
    sampler.start()
    cpu, wall = cpu_seconds(), time.perf_counter()
    inventory = imagenet_forms.scan(src, skip_bad=False, workers=workers)  # what prepare_shards does, timed apart
    listing = cpu_seconds() - cpu
    manifest = write_dataset(inventory, out / "imagenet", images_per_shard=1000, max_side=None, workers=workers)
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    stop.set()
    sampler.join()
    rows = sum(v["rows"] for v in manifest["splits"].values())
    size, files = tree_bytes(out)
    return {
        "rows": rows,
        "cpu_s": cpu,
        "listing_cpu_s": listing,
        "wall_s": wall,
        "peak_bytes": max([*samples, size]),
        "files": files,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nepa-forms-") as tmp:
        top = Path(tmp)
        made = write_sources(top, args.images, args.val, args.classes)
        forms = {"tars": top / "tars", "tree": top / "tree"}
        source = {form: tree_bytes(path) for form, path in forms.items()}
        runs: dict[tuple[str, int], list[dict]] = {(f, w): [] for f in forms for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:
                for form, src in forms.items():
                    runs[form, workers].append(run(src, top / "out", workers))
    total = args.images + args.val
    rows = []
    for (form, workers), done in runs.items():
        assert all(r["rows"] == total for r in done)
        rows.append(
            {
                "form": form,
                "workers": workers,
                "images_per_cpu_s": statistics.median(total / r["cpu_s"] for r in done),
                "images_per_s": statistics.median(total / r["wall_s"] for r in done),
                "listing_cpu_s": statistics.median(r["listing_cpu_s"] for r in done),
                "peak_extra_mb": max(r["peak_bytes"] for r in done) / 1e6,
                "source_mb": source[form][0] / 1e6,
                "source_files_per_1000": 1000 * source[form][1] / total,
                "output_files_per_1000": 1000 * done[0]["files"] / total,
                "runs": done,
            }
        )
    result = {
        "machine": machine(),
        "command": "python benchmarks/data_forms.py " + " ".join(sys.argv[1:]),
        "images": {"train": args.images, "val": args.val, "classes": args.classes, **made},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_forms.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "data_forms.md").write_text(report(result))
    print(report(result))


def report(result: dict) -> str:
    m, im = result["machine"], result["images"]
    lines = [
        "# Preparing ImageNet from the tars vs from the extracted tree",
        "",
        f"`{result['command']}` on {m['cpu']} ({m['cores']} cores), {m['date']}. {im['train']:,} train + "
        f"{im['val']:,} val realistic JPEGs ({im['mean_kb']:.0f} KB, {im['mean_megapixels']:.2f} MP mean), "
        f"{im['classes']} classes; medians of the repeats (per core: images per CPU-second, this process and its "
        "workers, listing included).",
        "",
        "| form | workers | images/s per core | images/s (wall) | listing (CPU s) | peak extra disk | source on disk | "
        "source files / 1,000 images | output files / 1,000 images |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['form']} | {r['workers']} | {r['images_per_cpu_s']:.0f} | {r['images_per_s']:.0f} | "
            f"{r['listing_cpu_s']:.2f} | "
            f"{r['peak_extra_mb']:.0f} MB | {r['source_mb']:.0f} MB | {r['source_files_per_1000']:.1f} | "
            f"{r['output_files_per_1000']:.1f} |"
        )
    tree = next(r for r in result["rows"] if r["form"] == "tree")
    tars = next(r for r in result["rows"] if r["form"] == "tars")
    lines += [
        "",
        f"Peak extra disk is the shards being written (staged, then renamed into place): the same for both forms. "
        f"A lab holding the tars paid, before nepa read them in place, for their extraction too: the tree, "
        f"{tree['source_mb']:.0f} MB in {tree['source_files_per_1000']:.0f} files per 1,000 images (+ folders), "
        f"beside the {tars['source_mb']:.0f} MB of tars it keeps. Shards: ~{tars['output_files_per_1000']:.0f} files "
        "per 1,000 images here (one 1,000-image shard per split and the manifest; at full scale ~1 per 1,000).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
