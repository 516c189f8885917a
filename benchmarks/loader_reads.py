"""What reading the shards costs with a cold page cache: the loader's random one-row reads vs sequential reads.

    python benchmarks/loader_reads.py [--images 4000] [--per-shard 500] [--samples 1500]

Writes realistic photo JPEGs (benchmarks/loader_photos.py) into an ImageNet tree, prepares them with
`nepa prepare imagenet` (--per-shard rows per shard), then times reading --samples images' bytes, three ways,
each after dropping the page cache (`echo 3 > /proc/sys/vm/drop_caches`, root only; without it the result
says the cache was warm):

  random rows, cold    the loader's access: one Parquet row group (one image) at a time, in the order of the
                       (seed, epoch) permutation of nepa/data/loaders.py, from memory-mapped shards
  sequential, cold     the same number of images, whole blocks of 64 consecutive rows from one shard at a time
  random rows, warm    the loader's access again, timed on a second pass, with everything cached

For each: wall-clock and CPU microseconds per image and the bytes this process read from the disk per
image (/proc/self/io read_bytes: readahead shows as more than the ~100 KB an image holds). One reader,
one thread, so wall time is the latency a DataLoader worker waits before it can decode. Writes
results/benchmarks/loader_reads.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from nepa.cli import main as nepa_main
from nepa.data.loaders import read_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_photos import write_imagenet_tree
from loader_throughput import machine

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 64
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> bool:
    os.sync()  # pages written but not yet on disk cannot be dropped: the shards were just written
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def disk_bytes_read() -> int:
    line = next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("read_bytes"))
    return int(line.split()[1])


def timed(read: Callable[[], int], count: int, cold: bool) -> dict[str, object]:
    dropped = drop_page_cache() if cold else False
    disk, cpu, wall = disk_bytes_read(), time.process_time(), time.perf_counter()
    payload = read()
    wall, cpu, disk = time.perf_counter() - wall, time.process_time() - cpu, disk_bytes_read() - disk
    return {
        "cache": "cold" if dropped else "warm",
        "us_per_image_wall": round(wall / count * 1e6, 1),
        "us_per_image_cpu": round(cpu / count * 1e6, 1),
        "disk_kb_per_image": round(disk / count / 1024, 1),
        "image_kb": round(payload / count / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--keep-cache", action="store_true", help="never drop the page cache (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "results/benchmarks")
    args = parser.parse_args()
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = write_imagenet_tree(root / "raw", args.images)
        (root / "params.yaml").write_text("seed: 0\n")
        sets = ["--params", str(root / "params.yaml"), "--set", f"data.root={root}", "--set", "data.workers=2",
                "--set", f"data.images_per_shard={args.per_shard}"]  # fmt: skip
        assert nepa_main(["prepare", "imagenet", "--src", str(root / "raw"), *sets]) == 0
        split = root / "shards/imagenet/train"
        shards = read_split(split)[1]["shards"]
        starts = np.cumsum([0] + [s["rows"] for s in shards])
        n = min(args.samples, int(starts[-1]) // BLOCK * BLOCK)
        order = np.random.default_rng([0, 0]).permutation(int(starts[-1]))[:n]  # the loader's epoch-0 order

        def random_rows() -> int:
            files = [pq.ParquetFile(split.parent / s["file"], memory_map=True) for s in shards]
            total = 0
            for index in order:
                k = int(np.searchsorted(starts, index, side="right")) - 1
                row = files[k].read_row_group(int(index - starts[k]), columns=["image", "label"], use_threads=False)
                total += len(row["image"][0].as_py())
            return total

        def sequential_blocks() -> int:
            total = 0
            blocks = [(k, b) for k, s in enumerate(shards) for b in range(0, s["rows"] - BLOCK + 1, BLOCK)]
            assert len(blocks) >= n // BLOCK, "fewer whole blocks than samples: use more rows per shard"
            for k, first in blocks[: n // BLOCK]:
                file = pq.ParquetFile(split.parent / shards[k]["file"], memory_map=True)
                table = file.read_row_groups(range(first, first + BLOCK), columns=["image", "label"], use_threads=False)
                total += sum(len(b) for b in table["image"].to_pylist())
            return total

        results = {
            "random rows, cold": timed(random_rows, n, cold=not args.keep_cache),
            "sequential blocks of 64 rows, cold": timed(sequential_blocks, n, cold=not args.keep_cache),
        }
        random_rows()  # now everything the next pass reads is cached
        results["random rows, warm"] = timed(random_rows, n, cold=False)
    result = {
        "benchmark": "shard reads, cold page cache",
        "command": "python " + " ".join(sys.argv),
        "workload": {**made, "rows_per_shard": args.per_shard, "shards": len(shards), "samples_read": n},
        "machine": host,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader_reads.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Shard reads with a cold page cache",
        "",
        f"{host['cpu']}, {host['cores']} cores, local disk, {host['date']}. {n} images' bytes read by one thread "
        f"from {len(shards)} shards of {args.per_shard} realistic photo JPEGs ({made['mean_kb']:.0f} KB mean); page "
        f"cache dropped before each cold run. Produced by `{result['command']}`.",
        "",
        "| access | cache | µs per image, wall | µs per image, CPU | KB read from disk per image | KB per image |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {k} | {r['cache']} | {r['us_per_image_wall']:.0f} | {r['us_per_image_cpu']:.0f} | "
            f"{r['disk_kb_per_image']:.0f} | {r['image_kb']:.0f} |"
            for k, r in results.items()
        ),
    ]
    (args.out / "loader_reads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
