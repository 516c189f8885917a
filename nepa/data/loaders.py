"""PyTorch loaders over the prepared shards (nepa/data/shards.py). The contract the engines rely on:

    make_loader(view, split_dir, *, batch_size, rank, world, seed, epoch, start_batch=0, num_workers=0,
                drop_last=True, verify=True, **view_kwargs) -> torch.utils.data.DataLoader
    num_batches(split_dir, *, batch_size, world, drop_last=True) -> int      # batches per epoch per rank

split_dir: a split folder of a prepared dataset, e.g. {data.root}/shards/imagenet/train (its manifest.json is
one level up). Batches: (images float32 [B,3,H,W], normalised, labels int64 [B]) for the views "pretrain",
"finetune" and "eval"; (images, masks int64 [B,H,W]) for "segment_train" and "segment_eval" (masks: 0 = ignore,
1..150 ADE20K classes). view_kwargs go to the view (nepa/data/transforms.py):
    pretrain(image_size, crop_scale=(0.08, 1.0))    finetune(image_size, auto_augment=..., reprob=0.25, crop_scale=...)
    eval(image_size, crop_ratio=0.875)              segment_train(crop, scale_range=(0.5, 2.0))
    segment_eval(patch_size)                        all: mean, std (default 0.5, 0.5)

Decoding (decode, data.decode; pretrain and finetune): "cpu" (libjpeg-turbo, uint8 crop and resize in torch),
"pil" (the official torchvision/timm-on-PIL pipeline), "gpu" (pretrain: nvJPEG on `device`, a batch at a
time; finetune falls back to "cpu", its RandAugment being PIL's), "auto" (gpu on a CUDA device, else cpu).
All draw the same crop boxes and flips for a sample (nepa/data/transforms.py says where pixels differ).
`device`: where the batches' images are delivered (None: the CPU). pretrain's "cpu" workers send uint8,
4x less to collate, pin and copy, and the images are normalised after the copy, on the device.
Order: a permutation of all N samples drawn from (seed, epoch); rank r takes every world-th sample from r
(striding), so global batch b (rank 0's batch b, rank 1's, ...) is always the permutation's b-th block of
world * batch_size samples, whatever the world size. drop_last=True first trims the permutation to a multiple
of world, so every rank has the same number of batches; drop_last=False (evaluation) keeps every sample once,
and the last ranks may then have one batch fewer than num_batches says (it counts rank 0).
Resume: the batch stream starts at start_batch; skipped batches are never read or decoded.
Augmentation: each sample's randomness comes from generators seeded by (seed, epoch, sample index), so a
batch is the same with any num_workers, after any resume, and on any world size.
Reading: every row is fetched by exactly one rank and one worker (the batches of a rank go round-robin to
its workers). A rank reads from every shard, as the permutation is global; a row group holds one row, so a
fetch reads that sample's bytes only. Measured with a cold page cache on local disk
(results/benchmarks/loader_reads.md): 0.33 ms wall and 0.25 ms CPU per image, 1.3x its bytes read
(readahead), against 0.17 ms and 0.12 ms reading whole 64-row blocks in order: ~6% of the ~2 ms of CPU an
image costs the "cpu" decode, and its latency overlaps across workers. So the order stays a global
permutation (no block shuffle: it would buy little here and make batches less random); after a first epoch
the shards sit in the page cache where RAM holds them (ImageNet train: ~140 GB). A cluster file system's
cold-cache random reads are not measured.
Integrity: before the first use of a split in a process, every shard's sha256 is checked against the
manifest (verify=False, or data.verify_shards: false, skips it for data too large to hash at each start);
a mismatch or a missing shard is a UserError naming the shard and saying to re-run `nepa prepare`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torch.utils.data.dataloader import default_collate

from nepa.data import gpu_decode
from nepa.data.shards import MANIFEST
from nepa.data.transforms import DECODED_VIEWS, MEAN, SEGMENT_VIEWS, STD, VIEWS, Decode, View, normalize, pad_collate
from nepa.errors import UserError

OPEN_SHARDS = 64  # open Parquet files kept per process: ImageNet has 1282, and file handles are limited
_verified: set[tuple[str, int]] = set()  # (split folder, manifest mtime) checked in this process


def read_split(split_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, the split's entry) of a prepared split folder."""
    split_dir = Path(split_dir)
    path = split_dir.parent / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: not found; run `nepa prepare` for this dataset (an interrupted run leaves none)")
    manifest = json.loads(path.read_text())
    if split_dir.name not in manifest["splits"]:
        raise UserError(f"{split_dir}: no split {split_dir.name!r} in {path} (it has {sorted(manifest['splits'])})")
    return manifest, manifest["splits"][split_dir.name]


def verify_split(split_dir: Path) -> None:
    """Check every shard of the split against the manifest's sha256, once per process."""
    manifest, split = read_split(split_dir)
    key = (str(split_dir.resolve()), (split_dir.parent / MANIFEST).stat().st_mtime_ns)
    if key in _verified:
        return
    fix = f"re-run `nepa prepare {manifest['dataset']}` (it rewrites only what is wrong)"
    for shard in split["shards"]:
        path = split_dir.parent / shard["file"]
        if not path.is_file():
            raise UserError(f"{path}: shard missing; {fix}")
        with path.open("rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != shard["sha256"]:
                raise UserError(f"{path}: sha256 does not match {MANIFEST} (changed or damaged); {fix}")
    _verified.add(key)


@functools.lru_cache(maxsize=OPEN_SHARDS)
def _shard(path: str, sha256: str) -> pq.ParquetFile:
    """An open shard; keyed by content too, so a shard rewritten by `nepa prepare` is opened afresh."""
    return pq.ParquetFile(path, memory_map=True)


def _seed_globals(s: int) -> None:
    torch.default_generator.manual_seed(s)  # the CPU one only: CUDA generators are the training's
    random.seed(s)
    np.random.seed(s)


@contextmanager
def seeded(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Seed torch's CPU, `random`'s and numpy's global generators for one sample. In the training process
    (num_workers=0) they are restored afterwards, as the training's own draws must not move; a DataLoader
    worker's generators serve its samples only, so it skips the (costlier) save and restore."""
    s = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
    if get_worker_info() is not None:
        _seed_globals(s)
        yield
        return
    state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    _seed_globals(s)
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        np.random.set_state(state[2])


class ShardDataset(Dataset):
    """Sample i of a split: its row from the shards (encoded bytes) through the view seeded by (seed, epoch, i)."""

    def __init__(self, split_dir: Path, view: View, target: str, seed: int, epoch: int) -> None:
        _, split = read_split(split_dir)
        self.files = [(str(split_dir.parent / s["file"]), s["sha256"]) for s in split["shards"]]
        self.starts = np.cumsum([0] + [s["rows"] for s in split["shards"]]).tolist()
        self.view, self.target, self.seed, self.epoch = view, target, seed, epoch

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        k = bisect.bisect_right(self.starts, index) - 1
        row = _shard(*self.files[k]).read_row_group(index - self.starts[k], columns=["image", self.target],
                                                     use_threads=False)  # fmt: skip
        with seeded(self.seed, self.epoch, index):
            return self.view(row["image"][0].as_py(), row[self.target][0].as_py())


def _rank_batches(n: int, *, batch_size: int, world: int, drop_last: bool, rank: int = 0) -> int:
    mine = len(range(rank, n // world * world if drop_last else n, world))  # samples of this rank
    return mine // batch_size if drop_last else -(-mine // batch_size)


def num_batches(split_dir: str | Path, *, batch_size: int, world: int, drop_last: bool = True) -> int:
    """Batches per epoch per rank (rank 0's where drop_last=False leaves the ranks uneven)."""
    return _rank_batches(read_split(split_dir)[1]["rows"], batch_size=batch_size, world=world, drop_last=drop_last)


class StridedBatches(Sampler[list[int]]):
    """Rank `rank`'s batches of the (seed, epoch) permutation, from batch `start_batch` on."""

    def __init__(self, n: int, *, batch_size: int, rank: int, world: int, seed: int, epoch: int, start_batch: int,
                 drop_last: bool) -> None:  # fmt: skip
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not within world {world}")
        self.n, self.batch_size, self.rank, self.world, self.seed, self.epoch = n, batch_size, rank, world, seed, epoch
        self.drop_last, self.start_batch = drop_last, start_batch
        self.total = _rank_batches(n, batch_size=batch_size, world=world, drop_last=drop_last, rank=rank)
        if not 0 <= start_batch <= self.total:
            raise ValueError(f"start_batch {start_batch} is not within the epoch's {self.total} batches")

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        if self.drop_last:
            order = order[: self.n // self.world * self.world]
        mine = order[self.rank :: self.world]
        for b in range(self.start_batch, self.total):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return self.total - self.start_batch


class Batches(DataLoader):
    """A DataLoader whose batches pass through `finish` (to the device, normalised) in the training process."""

    def __init__(self, dataset: Dataset, *, finish: Any, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.finish = finish

    def __iter__(self) -> Iterator[Any]:
        return map(self.finish, super().__iter__())


def resolve_decode(decode: str, view: str, device: torch.device | None) -> Decode:
    """The decode a view gets: see the module doc."""
    if decode == "auto":
        decode = "gpu" if device is not None and device.type == "cuda" else "cpu"
    if decode not in ("cpu", "gpu", "pil"):
        raise ValueError(f"decode {decode!r} is not one of auto, cpu, gpu, pil")
    return "cpu" if decode == "gpu" and view != "pretrain" else decode


def _finisher(decode: str | None, device: torch.device | None, size: int | None, mean: tuple, std: tuple) -> Any:
    """What the training process does to each batch: decode on the device (gpu), or move and normalise."""
    if decode == "gpu":
        device = device or torch.device("cpu")  # the CPU runs the same code (module doc of gpu_decode)
        return lambda batch: (gpu_decode.images(batch, size, device, mean, std), batch.targets)

    def finish(batch: tuple[Tensor, Any]) -> tuple[Tensor, Any]:
        images, targets = batch
        if device is not None:
            images = images.to(device, non_blocking=True)
        return (normalize(images, mean, std) if images.dtype == torch.uint8 else images), targets

    return finish


def make_loader(view: str, split_dir: str | Path, *, batch_size: int, rank: int, world: int, seed: int, epoch: int,
                start_batch: int = 0, num_workers: int = 0, drop_last: bool = True, verify: bool = True,
                decode: str = "auto", device: torch.device | None = None, **view_kwargs: Any) -> Batches:  # fmt: skip
    """One epoch of batches for this rank; see the module doc."""
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not one of {sorted(VIEWS)}")
    split_dir = Path(split_dir)
    manifest, _ = read_split(split_dir)
    target = "mask" if view in SEGMENT_VIEWS else "label"
    if target not in manifest["columns"]:
        raise UserError(f"{split_dir}: view {view!r} needs {target}s, but this {manifest['dataset']} split has none")
    if verify:
        verify_split(split_dir)
    if view in DECODED_VIEWS:
        view_kwargs["decode"] = resolve_decode(decode, view, device)
    on_device = view_kwargs.get("decode") == "gpu"
    finish = _finisher(view_kwargs.get("decode"), device, view_kwargs.get("image_size"),
                       view_kwargs.get("mean", MEAN), view_kwargs.get("std", STD))  # fmt: skip
    collate = gpu_decode.collate if on_device else pad_collate if target == "mask" else default_collate
    dataset = ShardDataset(split_dir, VIEWS[view](**view_kwargs), target, seed, epoch)
    sampler = StridedBatches(len(dataset), batch_size=batch_size, rank=rank, world=world, seed=seed, epoch=epoch,
                             start_batch=start_batch, drop_last=drop_last)  # fmt: skip
    return Batches(
        dataset,
        finish=finish,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        # DataLoader draws its workers' base seed from this, not from the training process's generator
        generator=torch.Generator().manual_seed(seed),
    )
