"""Dataset preparation and loaders, driven over real Fashion-MNIST JPEG/PNG trees (small subsets).

The embedded raw layouts and their shards are built once per module through the CLI; tests that break or
interrupt things work on copies.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from nepa.cli import main as nepa_main
from nepa.data.embedded import CLASSES, find_fashion_mnist, load_split, render_scene, scene_layout
from nepa.data.loaders import StridedBatches, make_loader, num_batches
from nepa.data.transforms import SEGMENT_VIEWS
from nepa.errors import UserError

TRAIN, VAL, SCENES, PER_SHARD = 300, 100, (24, 8), 64
SMALL = [
    f"data.embedded_images=[{TRAIN},{VAL}]",
    f"data.embedded_scenes=[{SCENES[0]},{SCENES[1]}]",
    f"data.images_per_shard={PER_SHARD}",
    "data.workers=2",
]


def nepa(root: Path, *args: str) -> int:
    params = root / "params.yaml"
    if not params.exists():
        params.write_text("seed: 0\n")
    sets = [x for s in [*SMALL, f"data.root={root / 'data'}"] for x in ("--set", s)]
    return nepa_main([*args, "--params", str(params), *sets])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, fashion_mnist: Path) -> Path:
    """A root with data/raw (both layouts) and data/shards (both datasets)."""
    root = tmp_path_factory.mktemp("prepared")
    for dataset in ("embedded", "imagenet", "ade20k"):
        assert nepa(root, "prepare", dataset) == 0
    return root


def copy_of(prepared: Path, tmp_path: Path) -> Path:
    shutil.copytree(prepared / "data", tmp_path / "data")
    return tmp_path


def manifest(root: Path, dataset: str) -> dict:
    return json.loads((root / "data/shards" / dataset / "manifest.json").read_text())


def shard_bytes(root: Path, dataset: str) -> dict[str, bytes]:
    return {p.name + p.parent.name: p.read_bytes() for p in sorted((root / "data/shards" / dataset).rglob("*.parquet"))}


# ---- the embedded layouts -------------------------------------------------------------------------


def test_embedded_imagenet_layout(prepared: Path, fashion_mnist: Path) -> None:
    raw = prepared / "data/raw/imagenet"
    index = json.loads((raw / "imagenet_class_index.json").read_text())
    assert index == {str(k): [f"n{k:08d}", name] for k, name in enumerate(CLASSES)}
    images, labels = load_split(fashion_mnist, "train", TRAIN)
    assert sorted(p.name for p in (raw / "train").iterdir()) == [f"n{k:08d}" for k in range(10)]
    assert sum(1 for _ in (raw / "train").rglob("*.JPEG")) == TRAIN
    assert sum(1 for _ in (raw / "val").rglob("ILSVRC2012_val_*.JPEG")) == VAL
    image = Image.open(raw / "train" / f"n{labels[7]:08d}" / f"n{labels[7]:08d}_7.JPEG")
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))
    pixels = np.asarray(image, np.float32)[..., 0]
    assert np.abs(pixels[2:30, 2:30] - images[7]).mean() < 3  # the real item, centred; JPEG q95 is near-lossless
    assert pixels[:2].max() < 16


def test_embedded_ade20k_masks_are_exact_and_seeded(prepared: Path, fashion_mnist: Path) -> None:
    raw = prepared / "data/raw/ADEChallengeData2016"
    for split, prefix, n in (("training", "train", SCENES[0]), ("validation", "val", SCENES[1])):
        assert len(list((raw / "images" / split).glob(f"ADE_{prefix}_*.jpg"))) == n
        assert len(list((raw / "annotations" / split).glob(f"ADE_{prefix}_*.png"))) == n
    images, labels = load_split(fashion_mnist, "train")
    scene, mask = render_scene(*scene_layout(np.random.default_rng([0, 0, 2]), images, labels, 64), 64)
    annotation = Image.open(raw / "annotations/training/ADE_train_00000003.png")
    assert annotation.mode == "L" and np.array_equal(np.asarray(annotation), mask)  # seed 0, split 0, scene 2
    assert set(np.unique(mask)) <= set(range(11)) and len(np.unique(mask)) >= 2
    jpeg = np.asarray(Image.open(raw / "images/training/ADE_train_00000003.jpg"), np.float32)[..., 0]
    assert np.abs(jpeg - scene).mean() < 3
    assert (scene[mask == 0] == 0).all() and (scene[mask > 0] > 16).all()  # labelled exactly where drawn
    info = (raw / "objectInfo150.txt").read_text().splitlines()
    assert info[0].split("\t") == ["Idx", "Ratio", "Train", "Val", "Name"] and info[10].endswith("\tAnkle boot")


def test_embedded_rerun_keeps_and_seed_redraws(
    tmp_path: Path, fashion_mnist: Path, capsys: pytest.CaptureFixture
) -> None:
    assert nepa(tmp_path, "prepare", "embedded") == 0
    mask = tmp_path / "data/raw/ADEChallengeData2016/annotations/training/ADE_train_00000001.png"
    before = mask.read_bytes()
    capsys.readouterr()
    assert nepa(tmp_path, "prepare", "embedded") == 0
    assert capsys.readouterr().out.count("up to date") == 2
    assert nepa(tmp_path, "prepare", "embedded", "--set", "seed=1") == 0
    out = capsys.readouterr().out
    assert "imagenet: up to date" in out and "ADEChallengeData2016: written" in out
    assert mask.read_bytes() != before
    assert not list((tmp_path / "data/raw").glob(".*"))  # no partial or old folders left


def test_embedded_part_deleted_is_written_again(
    prepared: Path, tmp_path: Path, fashion_mnist: Path, capsys: pytest.CaptureFixture
) -> None:
    root = copy_of(prepared, tmp_path)
    raw = root / "data/raw"
    before = {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    shutil.rmtree(raw / "imagenet/val")
    (raw / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png").unlink()
    capsys.readouterr()
    assert nepa(root, "prepare", "embedded") == 0
    out = capsys.readouterr().out
    assert f"{raw / 'imagenet'}: written again: val has 0 of {VAL} files" in out
    assert f"annotations/training has {SCENES[0] - 1} of {SCENES[0]} files" in out
    assert {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before  # as it was
    assert nepa(root, "prepare", "imagenet") == 0


def test_missing_fashion_mnist(tmp_path: Path, fashion_mnist: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert nepa(tmp_path, "prepare", "embedded", "--set", "data.fashion_mnist_dir=/nowhere/fashion-mnist") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "/nowhere/fashion-mnist" in err and "apt-get install dataset-fashion-mnist" in err
    # without root, the setup script unpacks the package under .cache/debs: found there
    shutil.copytree(fashion_mnist, tmp_path / ".cache/debs/nowhere/fashion-mnist")
    assert find_fashion_mnist("/nowhere/fashion-mnist") == Path(".cache/debs/nowhere/fashion-mnist")


# ---- shards --------------------------------------------------------------------------------------


def test_shards_and_manifest(prepared: Path) -> None:
    m = manifest(prepared, "imagenet")
    assert m["columns"] == ["key", "image", "label"] and m["reencode"]["max_side"] is None
    assert [c["id"] for c in m["classes"]] == [f"n{k:08d}" for k in range(10)] and m["classes"][9][
        "name"
    ] == "Ankle boot"
    train = m["splits"]["train"]
    assert train["rows"] == TRAIN and len(train["shards"]) == -(-TRAIN // PER_SHARD) and not train["skipped"]
    assert m["splits"]["val"]["rows"] == VAL
    table = pq.read_table(prepared / "data/shards/imagenet" / train["shards"][0]["file"])
    keys = table["key"].to_pylist()
    assert keys == sorted(keys) and len(keys) == PER_SHARD
    for key, label in zip(keys, table["label"].to_pylist(), strict=True):
        assert key.split("/")[1] == f"n{label:08d}"
    assert pq.ParquetFile(prepared / "data/shards/imagenet" / train["shards"][0]["file"]).num_row_groups == PER_SHARD
    a = manifest(prepared, "ade20k")
    assert a["columns"] == ["key", "image", "mask"] and a["classes"][0] == {
        "index": 1,
        "id": "1",
        "name": "T-shirt/top",
    }
    assert (a["splits"]["training"]["rows"], a["splits"]["validation"]["rows"]) == SCENES


def test_resume_writes_only_what_is_missing(prepared: Path, tmp_path: Path, capsys) -> None:
    root = copy_of(prepared, tmp_path)
    shards = root / "data/shards/imagenet/train"
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    (shards / "part-00002.parquet").unlink()  # interrupted: one shard never renamed into place ...
    (shards / "part-00002.parquet.tmp").write_bytes(b"PAR1 half a shard")  # ... its temp file half written
    capsys.readouterr()
    assert nepa(root, "prepare", "imagenet") == 0
    assert "wrote 1 shards, kept 6" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    assert set(after) == set(before) and all(after[k] == before[k] for k in after if k != "part-00002.parquet")
    assert manifest(root, "imagenet")["splits"] == manifest(prepared, "imagenet")["splits"]  # same sha256


def test_reencode_is_applied_and_recorded(prepared: Path, tmp_path: Path) -> None:
    root = copy_of(prepared, tmp_path)
    assert nepa(root, "prepare", "ade20k", "--reencode-max-side", "48") == 0
    m = manifest(root, "ade20k")
    assert m["reencode"] == {"max_side": 48, "jpeg_quality": 90}
    row = pq.read_table(root / "data/shards/ade20k" / m["splits"]["training"]["shards"][0]["file"]).slice(0, 1)
    image, mask = (Image.open(io.BytesIO(row[c][0].as_py())) for c in ("image", "mask"))
    assert image.size == mask.size == (48, 48) and mask.mode == "L"
    assert set(np.unique(np.asarray(mask))) <= set(range(11))  # nearest: labels are not blended


# ---- bad input: one line naming the file, exit 2, nothing lost; --skip-bad records it ------------------


def _truncate(raw: Path) -> Path:
    path = sorted((raw / "imagenet/train/n00000003").iterdir())[1]
    path.write_bytes(path.read_bytes()[:200])
    return path


def _not_an_image(raw: Path) -> Path:
    path = sorted((raw / "imagenet/val/n00000005").iterdir())[0]
    path.write_text("this is not a JPEG")
    return path


def _wrong_mask_size(raw: Path) -> Path:
    path = raw / "ADEChallengeData2016/annotations/training/ADE_train_00000005.png"
    Image.new("L", (32, 32)).save(path)
    return path


def _missing_mask(raw: Path) -> Path:
    path = raw / "ADEChallengeData2016/annotations/validation/ADE_val_00000002.png"
    path.unlink()
    return path


def _empty_class(raw: Path) -> Path:
    path = raw / "imagenet/train/n00000006"
    for f in path.iterdir():
        f.unlink()
    return path


@pytest.mark.parametrize(
    ("dataset", "split", "damage", "says", "rows_lost"),
    [
        ("imagenet", "train", _truncate, "truncated", 1),
        ("imagenet", "val", _not_an_image, "not a readable image", 1),
        ("ade20k", "training", _wrong_mask_size, "32x32 but its image is 64x64", 1),
        ("ade20k", "validation", _missing_mask, "missing annotation", 1),
        ("imagenet", "train", _empty_class, "empty class folder", None),
    ],
)
def test_bad_input(
    prepared: Path, tmp_path: Path, capsys, dataset: str, split: str, damage, says: str, rows_lost: int | None
) -> None:
    root = copy_of(prepared, tmp_path)
    before = shard_bytes(root, dataset)
    rows = manifest(root, dataset)["splits"][split]["rows"]
    bad = damage(root / "data/raw")
    capsys.readouterr()
    assert nepa(root, "prepare", dataset) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"nepa prepare: error: {bad}: ") and says in err.lower() and "--skip-bad" in err
    assert shard_bytes(root, dataset) == before  # nothing already written is lost
    assert nepa(root, "prepare", dataset, "--skip-bad") == 0
    m = manifest(root, dataset)["splits"][split]
    assert [s["file"] for s in m["skipped"]] == [str(bad)] and says.split()[0] in m["skipped"][0]["reason"].lower()
    expected = (
        rows - rows_lost if rows_lost else rows - len(list(prepared.glob(f"data/raw/imagenet/train/{bad.name}/*")))
    )
    assert m["rows"] == expected


def test_missing_source_says_what_it_found(tmp_path: Path, capsys) -> None:
    assert nepa(tmp_path, "prepare", "imagenet", "--src", str(tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"nepa prepare: error: {tmp_path / 'nowhere'}: found nothing (no such file or folder); nepa reads ImageNet as "
        "an ImageFolder tree (train/<wnid>/, val/<wnid>/"
    )
    assert "ILSVRC2012_img_train.tar" in err and "Hugging Face" in err and len(err.splitlines()) == 1
    junk = tmp_path / "junk"
    (junk / "images").mkdir(parents=True)
    (junk / "notes.txt").write_text("x")
    assert nepa(tmp_path, "prepare", "ade20k", "--src", str(junk)) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith(
            f"nepa prepare: error: {junk}: found a folder holding images/, notes.txt (2 entries); nepa reads ADE20K as "
            "the ADEChallengeData2016 folder (images/, annotations/), ADEChallengeData2016.zip"
        )
    )
    assert nepa(tmp_path, "prepare", "ade20k") == 2  # embedded scale, raw layouts not written yet
    assert (
        capsys.readouterr().err.strip() == f"nepa prepare: error: {tmp_path / 'data/raw/ADEChallengeData2016'}: "
        "not found; run `nepa prepare embedded` first (it writes the embedded raw layouts)"
    )


def test_damaged_shard_is_refused_by_the_loader(prepared: Path, tmp_path: Path) -> None:
    root = copy_of(prepared, tmp_path)
    split = root / "data/shards/imagenet/val"
    shard = split / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-9] + b"X" + shard.read_bytes()[-8:])
    with pytest.raises(UserError, match=f"{shard}: sha256 does not match.*re-run `nepa prepare imagenet`"):
        make_loader("eval", split, batch_size=8, rank=0, world=1, seed=0, epoch=0, image_size=32)
    make_loader("eval", split, batch_size=8, rank=0, world=1, seed=0, epoch=0, image_size=32, verify=False)


# ---- loaders -------------------------------------------------------------------------------------


def batches(prepared: Path, view: str = "pretrain", split: str = "imagenet/train", **kw) -> list:
    """All batches of one epoch; classification views at 32 px unless told."""
    size = {} if view in SEGMENT_VIEWS else {"image_size": 32}
    kw = {"batch_size": 16, "rank": 0, "world": 1, "seed": 3, "epoch": 1, **size, **kw}
    return list(make_loader(view, prepared / "data/shards" / split, **kw))


def test_same_batches_for_any_workers_and_after_resume(prepared: Path) -> None:
    full = batches(prepared)
    assert len(full) == num_batches(prepared / "data/shards/imagenet/train", batch_size=16, world=1) == TRAIN // 16
    x, y = full[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    two = batches(prepared, num_workers=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, two, strict=True))
    tail = batches(prepared, start_batch=11, num_workers=2)
    assert len(tail) == len(full) - 11
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[11:], tail, strict=True))
    other = batches(prepared, epoch=2)
    assert not torch.equal(full[0][0], other[0][0])


def test_ranks_read_disjoint_samples_and_global_batches_do_not_depend_on_world(prepared: Path) -> None:
    n = TRAIN
    ranks = [
        list(StridedBatches(n, batch_size=8, rank=r, world=3, seed=0, epoch=0, start_batch=0, drop_last=True))
        for r in range(3)
    ]
    seen = [i for batches_ in ranks for b in batches_ for i in b]
    assert len(seen) == len(set(seen)) == n // 3 // 8 * 8 * 3
    one = list(StridedBatches(n, batch_size=24, rank=0, world=1, seed=0, epoch=0, start_batch=0, drop_last=True))
    for b, global_batch in enumerate(one):
        assert sorted(global_batch) == sorted(i for r in range(3) for i in ranks[r][b])
    # the same samples with the same augmentation: world 1 batch 32 = ranks 0 and 1 of world 2, interleaved
    x1, y1 = batches(prepared, batch_size=32)[0]
    (x2a, y2a), (x2b, y2b) = (batches(prepared, world=2, rank=r)[0] for r in (0, 1))
    assert torch.equal(x1[0::2], x2a) and torch.equal(x1[1::2], x2b)
    assert torch.equal(y1[0::2], y2a) and torch.equal(y1[1::2], y2b)
    # evaluation keeps every sample once; later ranks may hold one batch fewer
    evals = [
        list(StridedBatches(VAL, batch_size=16, rank=r, world=3, seed=0, epoch=0, start_batch=0, drop_last=False))
        for r in range(3)
    ]
    assert sorted(i for e in evals for b in e for i in b) == list(range(VAL))
    assert num_batches(prepared / "data/shards/imagenet/val", batch_size=16, world=3, drop_last=False) == len(evals[0])
    # 34 samples on 3 ranks: 12, 11, 11, so rank 0 has one batch of 11 more; each length is what it yields
    uneven = [
        StridedBatches(34, batch_size=11, rank=r, world=3, seed=0, epoch=0, start_batch=0, drop_last=False)
        for r in range(3)
    ]
    assert [len(s) for s in uneven] == [len(list(s)) for s in uneven] == [2, 1, 1]


def test_loading_leaves_the_training_generators_alone(prepared: Path) -> None:
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    batches(prepared, "finetune", start_batch=17)
    assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(5)).item()
    assert random.random() == random.Random(5).random() and np.random.rand() == np.random.RandomState(5).rand()


def test_views(prepared: Path) -> None:
    x, y = batches(prepared, "finetune", auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25)[0]
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
    x, y = batches(prepared, "eval", "imagenet/val", drop_last=False)[-1]
    assert x.shape == (VAL % 16, 3, 32, 32)
    x, m = batches(prepared, "segment_train", "ade20k/training", batch_size=4, crop=48, scale_range=(1.0, 2.0))[0]
    assert x.shape == (4, 3, 48, 48) and m.shape == (4, 48, 48) and m.dtype == torch.int64
    assert set(m.unique().tolist()) <= set(range(11))
    assert x[:, 0][m > 0].mean() > x[:, 0][m == 0].mean() + 0.5  # the mask follows the image through scale/crop/flip
    x, m = batches(prepared, "segment_eval", "ade20k/validation", batch_size=4, patch_size=14)[0]
    assert x.shape == (4, 3, 70, 70) and (m[:, 64:] == 0).all() and (x[:, :, 64:] == 0).all()
    with pytest.raises(UserError, match="needs masks"):
        batches(prepared, "segment_eval", "imagenet/val", patch_size=14)
