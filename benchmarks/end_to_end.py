"""End-to-end pretraining throughput with the real data path vs the model alone on synthetic tensors.

    python benchmarks/end_to_end.py                           # GPU: nepa-base, batch 128, ImageNet-like temp shards
    python benchmarks/end_to_end.py --split data/shards/imagenet/train --workers 10
    python benchmarks/end_to_end.py --device cpu              # CPU: nepa-tiny at 32 px, batch 32 (harness check)

Three measurements, each a fresh process running the real engine (nepa.engine.trainer.Trainer.fit: DeepSpeed
ZeRO --zero-stage, AdamW, EMA, bf16 autocast on GPU, the metrics rows) on the same model and micro-batch:
    end_to_end   batches from `make_loader("pretrain", ...)` as `nepa pretrain` builds them: Parquet shards ->
                 PIL decode -> RandomResizedCrop + flip + normalise in --workers DataLoader workers -> pinned
                 memory -> the device (non_blocking)
    model_only   one synthetic batch already on the device, every step
    loader_only  the same loader iterated alone, no model: what the data path can deliver with these workers
Speed: images/s over --rows rows of --row-steps optimizer steps each, after one such row of warm-up (the engine's
own metrics rows, read from its metrics.csv). The ratio end_to_end / model_only says whether the loader keeps the
device busy (target: >= 0.9, i.e. within 10%).

Data: --split, a prepared split (e.g. the real ImageNet shards: the figure that counts); without it, a temporary
one of --images Fashion-MNIST items upsampled to JPEGs of 256/224 x the model's input side (bicubic, quality 90),
sharded by `nepa prepare imagenet`'s code. Those are smaller and cheaper to decode than ImageNet's ~110 KB photos,
so the temporary split flatters the data path. Writes results/benchmarks/end_to_end_{cuda|cpu}_{stamp}.json and .csv.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from harness import RESULTS, build, emit, engine_defaults, engine_parts, record, run_trial
from PIL import Image

from nepa import measurements

SCRIPT = Path(__file__).resolve()
MIN_RATIO = 0.9


def write_split(out: Path, count: int, side: int) -> Path:
    """A prepared ImageNet-style split of `count` upsampled Fashion-MNIST JPEGs of side `side`; its train folder."""
    from nepa.config import DataParams
    from nepa.data.embedded import find_fashion_mnist, load_split, wnid
    from nepa.data.shards import prepare_shards

    raw = out / "raw"
    images, labels = load_split(find_fashion_mnist(DataParams().fashion_mnist_dir), "train", count)
    for i, (item, label) in enumerate(zip(images, labels, strict=True)):
        for split in ("train", "val") if i < 10 else ("train",):
            folder = raw / split / wnid(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            big = Image.fromarray(item).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
            big.save(folder / f"{wnid(int(label))}_{i}.JPEG", quality=90)
    prepare_shards("imagenet", raw, out / "shards", images_per_shard=1000, max_side=None, skip_bad=False, workers=0)
    return out / "shards" / "train"


def trial(args: argparse.Namespace) -> None:
    """One measurement, in this (fresh) process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from nepa.data.loaders import make_loader, num_batches
    from nepa.engine import distributed
    from nepa.engine.distributed import DistEnv
    from nepa.engine.trainer import Trainer

    torch.manual_seed(0)
    subject = build(args.model)
    side = subject.img_size

    def loader(epoch: int, start: int) -> Any:
        return make_loader(
            "pretrain",
            args.split,
            batch_size=args.batch,
            rank=0,
            world=1,
            seed=0,
            epoch=epoch,
            start_batch=start,
            num_workers=args.workers,
            verify=False,
            image_size=side,
        )

    steps = args.row_steps * (args.rows + 1)
    if args.trial == "loader_only":
        timed, first = [], time.perf_counter()
        for i, _ in enumerate(itertools.islice(itertools.chain.from_iterable(loader(e, 0) for e in range(99)), steps)):
            if i == args.row_steps - 1:
                first = time.perf_counter()  # the first row is warm-up, as in the engine's rows
            timed.append(time.perf_counter())
        emit({"status": "ok", "images_per_s": round(args.batch * (steps - args.row_steps) / (timed[-1] - first), 2)})
        return
    env = DistEnv()
    device = distributed.init(env)
    if args.trial == "end_to_end":
        batches, per_epoch = loader, num_batches(args.split, batch_size=args.batch, world=1)
    else:
        images = torch.randn(args.batch, 3, side, side, device=device)
        batch = (images, torch.zeros(args.batch, dtype=torch.long, device=device))
        per_epoch = 10**6
        batches = lambda epoch, start: itertools.repeat(batch, per_epoch - start)  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        schedule = dict(
            epochs=max(1, -(-steps // per_epoch)), log_every=args.row_steps, name=f"end_to_end {args.trial}"
        )
        task, cfg = engine_parts(subject, batches, per_epoch, folder, args.batch, steps, args.zero_stage, **schedule)
        status = Trainer(cfg, task, env, device).fit()
        rows = pd.read_csv(Path(folder) / "metrics.csv")
    timed = rows.iloc[1:]  # the first row is warm-up: worker start, first batches, allocator, kernel choices
    seconds = (args.row_steps * args.batch / timed["images_per_s"]).sum()
    emit(
        {
            "status": "ok" if status == 0 else f"exit {status}",
            "images_per_s": round(len(timed) * args.row_steps * args.batch / seconds, 2),
            "row_images_per_s": [round(x, 1) for x in timed["images_per_s"]],
        }
    )
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="nepa-SIZE[-swiglu] (default: GPU nepa-base, CPU nepa-tiny)")
    parser.add_argument("--batch", type=int, help="micro-batch (default: GPU 128, CPU 32)")
    parser.add_argument("--split", type=Path, help="a prepared split folder (default: a temporary one, see above)")
    parser.add_argument("--images", type=int, help="images in the temporary split (default: enough for one epoch)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: min(10, cores - 1), at least 1)")
    parser.add_argument("--row-steps", type=int, help="optimizer steps per timed row (default: GPU 10, CPU 2)")
    parser.add_argument("--rows", type=int, default=3, help="timed rows after the warm-up row")
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, help="torch threads of the training process (default: CPU 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--trial", choices=["end_to_end", "model_only", "loader_only"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    device, env = engine_defaults(parser, args, gpu_model="nepa-base", gpu_batch=128)
    gpu = device.type == "cuda"
    args.row_steps = args.row_steps or (10 if gpu else 2)
    cores = len(os.sched_getaffinity(0))
    args.workers = args.workers if args.workers is not None else max(1, min(10, cores - 1))
    if args.trial:
        return trial(args)
    with tempfile.TemporaryDirectory() as tmp:
        side = build(args.model).img_size
        data: dict[str, Any]
        if args.split is None:
            count = args.images or args.batch * args.row_steps * (args.rows + 1) + args.batch
            start = time.perf_counter()
            args.split = write_split(Path(tmp), count, round(side * 256 / 224))
            data = {
                "split": "temporary",
                "images": count,
                "jpeg_side": round(side * 256 / 224),
                "source": "Fashion-MNIST upsampled (bicubic), JPEG quality 90",
                "prepare_s": round(time.perf_counter() - start, 1),
            }
        else:
            data = {"split": str(args.split)}
        settings = dict(
            model=args.model,
            batch=args.batch,
            workers=args.workers,
            threads=args.threads,
            row_steps=args.row_steps,
            rows=args.rows,
            zero_stage=args.zero_stage,
            data=data,
        )
        result = record("end_to_end", device, settings)
        print(
            f"end to end, {args.model} batch {args.batch}, {args.workers} workers, on {result['device']['name']}; "
            f"{result['command']}",
            flush=True,
        )
        flags = ["--model", args.model, "--batch", str(args.batch), "--split", str(args.split), "--workers",
                 str(args.workers), "--row-steps", str(args.row_steps), "--rows", str(args.rows), "--zero-stage",
                 str(args.zero_stage), "--device", str(device), *(["--threads", str(args.threads)] if args.threads
                 else [])]  # fmt: skip
        rows = []
        for mode in ("model_only", "end_to_end", "loader_only"):
            row = {
                "mode": mode,
                "model": args.model,
                "batch": args.batch,
                "workers": args.workers,
                **run_trial(SCRIPT, [mode, *flags], env),
            }
            rows.append(row)
            print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    speed = {r["mode"]: r.get("images_per_s") for r in rows if r["status"] == "ok"}
    if speed.get("model_only") and speed.get("end_to_end"):
        ratio = speed["end_to_end"] / speed["model_only"]
        result["ratio_end_to_end_to_model_only"] = round(ratio, 3)
        verdict = "meets" if ratio >= MIN_RATIO else "MISSES"
        scope = "" if gpu else " (informative only: the target is for the GPU run)"
        result["targets"] = [f"end to end / model only = {ratio:.3f}: {verdict} the >= {MIN_RATIO} target{scope}"]
        print(result["targets"][0])
    path = measurements.write(result, rows, args.out)
    print(f"wrote {path} and {path.with_suffix('.csv').name}")


if __name__ == "__main__":
    main()
