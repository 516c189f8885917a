"""ImageNet-1K / ADE20K, in any form held -> sharded Parquet + manifest.json, the form DVC versions and loaders read.

The forms (folder trees, the distribution tars and zip, Hugging Face copies) are recognised and listed by
nepa/data/imagenet_forms.py and nepa/data/ade20k_forms.py; their bytes are read in place (nepa/data/sources.py).

Why shards: ImageNet-1K train is 1.28M files of ~110 KB. DVC hashes, caches and pushes per file, and file
systems and object stores pay per file, so 1.28M files take hours where ~1300 large files take minutes.

How many (data.images_per_shard = 1000):
  ImageNet-1K  train 1,281,167 images -> 1282 shards of ~110 MB (the train JPEGs average ~110 KB)
               val 50,000 -> 50 shards of ~130 MB
  ADE20K       training 20,210 pairs -> 21 shards of ~40 MB; validation 2,000 -> 2 shards
  embedded     imagenet train 60,000 -> 60 shards of ~1.5 MB, val 10,000 -> 10; ade20k 2000 + 500 scenes -> 2 + 1
~100 MB shards make per-file costs vanish, while a shard is still seconds of work for one writer (a resume
loses little), fits in a writer's memory, and 1282 of them spread evenly over any number of processes.

Layout under {data.root}/shards/:
  imagenet/{train,val}/part-NNNNN.parquet           key string, image binary (as encoded), label int64
  ade20k/{training,validation}/part-NNNNN.parquet   key string, image binary, mask binary (PNG, mode L)
  <dataset>/manifest.json                           rows per split and shard, sha256 of every shard, class map,
                                                    re-encode setting, skipped files
Rows follow the sorted keys (split/<wnid>/<file>, split/<file>), the same from a tree or the tars; a Hugging
Face copy keeps its own row order. The loaders shuffle. Every row group holds one row, so a loader reads a
random sample by reading its bytes only (the global per-epoch permutation needs random access); the cost
is ~170 bytes of footer per row (0.2% of an ImageNet shard). No Parquet compression: JPEG and PNG bytes are
compressed already. ImageNet labels are the standard class index (synset ids sorted: torchvision's and
Hugging Face's order) whatever the form (nepa/data/imagenet_forms.py says how each form proves it).

Checks: every image is decoded (JPEG at 1/8 scale, which still reads all its data, so truncation shows) and
every mask must be a mode L/P PNG of its image's size. A bad file, an empty class folder or a missing
annotation stops the run with one line naming it, or with data.skip_bad (--skip-bad) is left out and recorded
in the manifest.

Resume: each shard carries in its Parquet metadata a fingerprint of what it holds (keys, the sources' sizes
and modification times, with offsets or rows inside an archive or table, labels, re-encode setting). A re-run
keeps the shards whose fingerprint matches and writes the others into .staging/, each whole or not at all.
Only when every shard of every split is written are the new ones renamed into place (manifest.json removed
just before, written last), so a run that fails midway (a bad file, a full disk, a signal) leaves the previous
manifest and shards as they were, readable, and its staged shards are taken as they are by the next run.

Re-encoding (data.reencode_max_side / --reencode-max-side, off by default): images whose long side exceeds
N are shrunk to N (bicubic) and stored as JPEG quality REENCODE_QUALITY, masks resized to match (nearest);
the setting is part of the manifest and of every shard's fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from nepa.data import ade20k_forms, imagenet_forms
from nepa.data.parallel import run_parallel
from nepa.data.sources import BadFile, Inventory, Item, Problems, read_sources, where
from nepa.errors import UserError
from nepa.files import atomic_path, atomic_write_text

FORMAT = 1
REENCODE_QUALITY = 90
MANIFEST = "manifest.json"
STAGING = ".staging"  # new shards wait here until the whole set is written


# ---- writing one shard (in a worker process) ------------------------------------------------------


def _check(path: str, data: bytes) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image and its size, or BadFile."""
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size  # before draft() shrinks it
        image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, which still reads every byte
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadFile(path, f"not a readable image ({e})", "replace or delete it") from None
    return image, size


def _resize(data: bytes, size: tuple[int, int], fmt: str, resample: Image.Resampling) -> bytes:
    """Re-encode at `size`: JPEG as RGB, a PNG mask in its own mode (nearest, so labels stay labels)."""
    image = Image.open(io.BytesIO(data))
    image = (image.convert("RGB") if fmt == "JPEG" else image).resize(size, resample)
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": REENCODE_QUALITY} if fmt == "JPEG" else {}))
    return out.getvalue()


def read_item(item: Item, data: bytes | BadFile, mask: bytes | BadFile | None, max_side: int | None) -> dict:
    """The row of one item from its source bytes, checked (and re-encoded if asked); BadFile if not usable."""
    for got in (data, mask):
        if isinstance(got, BadFile):
            raise got
    _, size = _check(where(item.image), data)
    row: dict[str, object] = {"key": item.key, "image": data}
    if item.mask is None:
        row["label"] = item.label
    else:
        m, mask_size = _check(where(item.mask), mask)
        if m.format != "PNG" or m.mode not in ("L", "P"):
            raise BadFile(
                where(item.mask),
                f"annotation is {m.format} mode {m.mode}, not a PNG of class indices (mode L)",
                "re-export it as an 8-bit PNG",
            )
        if mask_size != size:
            raise BadFile(
                where(item.mask),
                f"annotation is {mask_size[0]}x{mask_size[1]} but its image is {size[0]}x{size[1]}",
                "re-export it at the image's size",
            )
        row["mask"] = mask
    if max_side is not None and max(size) > max_side:
        scale = max_side / max(size)
        smaller = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        row["image"] = _resize(data, smaller, "JPEG", Image.Resampling.BICUBIC)
        if item.mask is not None:
            row["mask"] = _resize(row["mask"], smaller, "PNG", Image.Resampling.NEAREST)
    return row


@dataclass(frozen=True)
class ShardTask:
    dataset: str
    path: Path
    items: list[Item]
    fingerprint: str
    max_side: int | None
    skip_bad: bool


def schema(dataset: str) -> pa.Schema:
    target = ("label", pa.int64()) if dataset == "imagenet" else ("mask", pa.binary())
    return pa.schema([("key", pa.string()), ("image", pa.binary()), target])


def write_shard(task: ShardTask) -> dict[str, object]:
    """Check and write one shard (whole or not at all); returns its manifest entry and its skipped files."""
    problems, rows = Problems(task.skip_bad), []
    images = read_sources([item.image for item in task.items])
    masks = read_sources([item.mask for item in task.items if item.mask is not None])
    if not masks:
        masks = [None] * len(images)
    for item, data, mask in zip(task.items, images, masks, strict=True):
        try:
            rows.append(read_item(item, data, mask, task.max_side))
        except BadFile as e:
            problems.report(e.path, e.reason, e.fix)
    meta = {"nepa.fingerprint": task.fingerprint, "nepa.skipped": json.dumps(problems.skipped)}
    table = pa.Table.from_pylist(rows, schema=schema(task.dataset).with_metadata(meta))
    with atomic_path(task.path) as tmp:
        pq.write_table(table, tmp, row_group_size=1, compression="none", use_dictionary=False, write_statistics=False)
    return {**shard_entry(task.path, table.num_rows), "skipped": problems.skipped}


def shard_entry(path: Path, rows: int) -> dict[str, object]:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"file": f"{path.parent.name}/{path.name}", "rows": rows, "bytes": path.stat().st_size, "sha256": digest}


def kept_shard(path: Path) -> dict[str, object]:
    """The manifest entry of a shard kept from an earlier run (hashed again: the manifest is rewritten)."""
    meta = pq.read_metadata(path)
    return {**shard_entry(path, meta.num_rows), "skipped": json.loads(meta.metadata[b"nepa.skipped"])}


def current_fingerprint(path: Path) -> str | None:
    """The fingerprint a finished shard was written with; None if there is no readable shard."""
    try:
        return pq.read_schema(path).metadata[b"nepa.fingerprint"].decode()
    except (OSError, KeyError, TypeError, pa.ArrowException):
        return None


def fingerprint(items: list[Item], max_side: int | None) -> str:
    spec = [FORMAT, max_side, [(i.key, i.stamp, i.label, i.mask is not None) for i in items]]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()


# ---- the whole dataset ---------------------------------------------------------------------------


def write_dataset(
    inventory: Inventory, out: Path, *, images_per_shard: int, max_side: int | None, workers: int
) -> dict:
    """Write (or complete) the shards of `inventory` under `out` and then its manifest.json; returns the manifest."""
    if images_per_shard < 1:
        raise UserError(f"data.images_per_shard must be at least 1, not {images_per_shard}")
    if max_side is not None and max_side < 1:
        raise UserError(f"data.reencode_max_side / --reencode-max-side must be at least 1 px, not {max_side}")
    staging = out / STAGING
    write, keep, staged, stale = [], [], [], []
    for split, items in inventory.splits.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        n = max(1, -(-len(items) // images_per_shard))
        for path in folder.iterdir():  # shards beyond this inventory: removed when the new set is complete
            part = path.name.removeprefix("part-").split(".")[0]
            if path.name.endswith(".tmp") or (part.isdigit() and int(part) >= n):
                stale.append(path)
        for k in range(n):
            chunk = items[k * images_per_shard : (k + 1) * images_per_shard]
            name = f"{split}/part-{k:05d}.parquet"
            skip_bad = inventory.problems[split].skip_bad
            task = ShardTask(inventory.name, staging / name, chunk, fingerprint(chunk, max_side), max_side, skip_bad)
            if current_fingerprint(out / name) == task.fingerprint:
                keep.append(dataclasses.replace(task, path=out / name))
            else:  # a shard staged by a run that failed later is taken as it is
                (keep if current_fingerprint(task.path) == task.fingerprint else write).append(task)
                staged.append(name)
    entries = {}
    jobs = [(t, len(t.items)) for t in write]
    for entry in run_parallel(write_shard, jobs, workers=workers, desc=f"{inventory.name} shards", unit="img"):
        entries[entry["file"]] = entry
    for entry in run_parallel(
        kept_shard,
        [(t.path, len(t.items)) for t in keep],
        workers=workers,
        desc=f"{inventory.name} kept shards (sha256)",
        unit="img",
    ):
        entries[entry["file"]] = entry
    # Every shard is whole: swap the new ones in. Until here the previous manifest and shards were untouched.
    if staged or stale:
        (out / MANIFEST).unlink(missing_ok=True)
    for name in staged:
        os.replace(staging / name, out / name)
    for path in stale:
        path.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    manifest = {
        "dataset": inventory.name,
        "format": FORMAT,
        "source": str(inventory.source),
        "columns": schema(inventory.name).names,
        "images_per_shard": images_per_shard,
        "reencode": {"max_side": max_side, "jpeg_quality": REENCODE_QUALITY if max_side else None},
        "classes": inventory.classes,
        "splits": {},
    }
    for split in inventory.splits:
        shards = sorted((e for f, e in entries.items() if f.startswith(f"{split}/")), key=lambda e: e["file"])
        skipped = inventory.problems[split].skipped + [s for e in shards for s in e.pop("skipped")]
        manifest["splits"][split] = {"rows": sum(e["rows"] for e in shards), "shards": shards, "skipped": skipped}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    print(
        f"{out}: wrote {len(staged)} shards, kept {len(keep) + len(write) - len(staged)}; "
        + ", ".join(
            f"{s} {v['rows']} rows in {len(v['shards'])} shards ({len(v['skipped'])} skipped)"
            for s, v in manifest["splits"].items()
        )
    )
    return manifest


def prepare_shards(
    dataset: str,
    src: Path,
    out: Path,
    *,
    images_per_shard: int,
    max_side: int | None,
    skip_bad: bool,
    workers: int,
    class_index: str | None = None,
) -> dict:
    """Recognise the form at `src`, list it, and write (or complete) its shards under `out`."""
    if dataset == "imagenet":
        inventory = imagenet_forms.scan(src, skip_bad=skip_bad, workers=workers, class_index=class_index)
    else:
        inventory = ade20k_forms.scan(src, skip_bad=skip_bad)
    return write_dataset(inventory, out, images_per_shard=images_per_shard, max_side=max_side, workers=workers)
