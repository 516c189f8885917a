"""`nepa prepare embedded`: real Fashion-MNIST written in the ImageNet-1K and ADE20K folder layouts.

The embedded default runs the whole pipeline on a CPU in minutes. Its data goes through the same code as the
real datasets: this module writes raw folders shaped like them, and `nepa prepare imagenet|ade20k` shards
those exactly as it shards the real ones (their `--src` defaults to these folders at `scale: embedded`).

Source: Debian's `dataset-fashion-mnist` (`data.fashion_mnist_dir`; without root the setup script unpacks
it under `.cache/debs/` of the repository, looked for relative to the working directory).

ImageNet-1K layout, `{data.root}/raw/imagenet/`:
  train/n0000000K/n0000000K_<i>.JPEG             FMNIST train image i, i < data.embedded_images[0]
  val/n0000000K/ILSVRC2012_val_<i+1:08d>.JPEG    FMNIST t10k image i, i < data.embedded_images[1]
  imagenet_class_index.json                      {"K": ["n0000000K", name]}, the layout of Keras' ImageNet file
  Class K's id is "n" + K in 8 digits: synset-shaped, and sorting the ids gives back the FMNIST label order,
  as sorting the synsets gives ImageNet's class indices. Images: the 28x28 item centred on a black
  `data.embedded_image_size` RGB canvas.
ADE20K layout, `{data.root}/raw/ADEChallengeData2016/`:
  images/{training,validation}/ADE_{train,val}_<j+1:08d>.jpg        RGB scene, `data.embedded_scene_size` square
  annotations/{training,validation}/ADE_{train,val}_<j+1:08d>.png   mode L: 0 background (ADE20K's "other",
                                                                      ignored), FMNIST class c -> c + 1
  objectInfo150.txt                                                 ADE20K's class table (tab-separated
                                                                      Idx Ratio Train Val Name), rows 1..10;
                                                                      ADE20K's classes 11..150 stay unused
  A scene holds 2-4 random FMNIST items (training scenes from FMNIST train, validation scenes from t10k) at
  random positions, later items on top. An item's pixels are those above ITEM_THRESHOLD, and only those are
  drawn and labelled, so masks are exact. Everything is drawn from (params.seed, split, scene index).

Each folder is written beside its final place and renamed into it when complete, with a stamp of the params
it was made from: a re-run with the same params does nothing, other params replace it whole, and so does a
re-run that finds a part gone or changed in number (val/ deleted, an annotation removed): it says which and
writes the folder again.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from nepa.config import Params
from nepa.data.parallel import run_parallel
from nepa.errors import UserError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
DEBS = Path(".cache/debs")  # where the setup script unpacks Debian packages when it cannot install them
STAMP = ".nepa-embedded.json"
ITEM_THRESHOLD = 16  # FMNIST background is ~0; fainter pixels are neither drawn nor labelled
ITEMS_PER_SCENE = (2, 4)
JPEG_QUALITY = 95
CHUNK = 1000  # images per pool task
ADE_SPLITS = (("training", "train", "train"), ("validation", "val", "t10k"))  # folder, file prefix, FMNIST split


def wnid(label: int) -> str:
    return f"n{label:08d}"


def find_fashion_mnist(configured: str) -> Path:
    """The folder holding the four Fashion-MNIST files: data.fashion_mnist_dir, else its copy under .cache/debs."""
    for folder in (Path(configured), DEBS / Path(configured).relative_to(Path(configured).anchor)):
        if all((folder / name).is_file() for name in FILES):
            return folder
    raise UserError(
        f"{configured}: Fashion-MNIST not found (nor under {DEBS}); run `apt-get install dataset-fashion-mnist` "
        f"(or the setup script, which does it), or point data.fashion_mnist_dir at the four *-ubyte.gz files"
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic 0x0000 08 <ndim>, big-endian int32 dims, then uint8 data)."""
    data = gzip.decompress(path.read_bytes())
    if data[:3] != b"\0\0\x08":
        raise UserError(f"{path}: not an unsigned-byte IDX file; reinstall dataset-fashion-mnist")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(folder: Path, split: str, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` (default all) images [N, 28, 28] and labels [N] of FMNIST `split` (train | t10k)."""
    images = read_idx(folder / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{split}-labels-idx1-ubyte.gz")
    count = len(images) if count is None else count
    if not 0 < count <= len(images):
        raise UserError(f"data.embedded_images: {count} is not within 1..{len(images)} (Fashion-MNIST {split})")
    return images[:count], labels[:count]


# ---- workers: one chunk of files per task ---------------------------------------------------------


def _write_images(task: tuple[list[Path], np.ndarray, int]) -> None:
    paths, items, size = task
    lo = (size - items.shape[1]) // 2
    for path, item in zip(paths, items, strict=True):
        canvas = np.zeros((size, size), np.uint8)
        canvas[lo : lo + item.shape[0], lo : lo + item.shape[1]] = item
        Image.fromarray(canvas).convert("RGB").save(path, quality=JPEG_QUALITY)


def render_scene(items: np.ndarray, labels: np.ndarray, corners: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Grey scene and its mask: each item pasted at its (y, x) corner where it is above ITEM_THRESHOLD."""
    scene = np.zeros((size, size), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    h, w = items.shape[1:]
    for item, label, (y, x) in zip(items, labels, corners, strict=True):
        on = item > ITEM_THRESHOLD
        scene[y : y + h, x : x + w][on] = item[on]
        mask[y : y + h, x : x + w][on] = label + 1
    return scene, mask


def _write_scenes(task: tuple[int, list[tuple[Path, Path]], list[tuple], int]) -> tuple[int, np.ndarray]:
    """Writes the scenes; returns the split and [11, 2]: per mask value, its pixels and the scenes holding it."""
    split, paths, layouts, size = task
    counts = np.zeros((len(CLASSES) + 1, 2), np.int64)
    for (image_path, mask_path), layout in zip(paths, layouts, strict=True):
        scene, mask = render_scene(*layout, size)
        Image.fromarray(scene).convert("RGB").save(image_path, quality=JPEG_QUALITY)
        Image.fromarray(mask, mode="L").save(mask_path)
        pixels = np.bincount(mask.ravel(), minlength=len(CLASSES) + 1)
        counts += np.stack([pixels, pixels > 0], axis=1)
    return split, counts


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


# ---- the two layouts --------------------------------------------------------------------------------


def write_imagenet(out: Path, fmnist: Path, counts: tuple[int, int], size: int, workers: int) -> None:
    tasks = []
    for split, source, count in (("train", "train", counts[0]), ("val", "t10k", counts[1])):
        images, labels = load_split(fmnist, source, count)
        for label in range(len(CLASSES)):
            (out / split / wnid(label)).mkdir(parents=True)
        name = "{w}_{i}.JPEG" if split == "train" else "ILSVRC2012_val_{j:08d}.JPEG"
        paths = [out / split / wnid(y) / name.format(w=wnid(y), i=i, j=i + 1) for i, y in enumerate(labels)]
        tasks += [((paths[s], images[s], size), s.stop - s.start) for s in _chunks(count)]
    for _ in run_parallel(_write_images, tasks, workers=workers, desc="embedded imagenet", unit="img"):
        pass
    index = {str(k): [wnid(k), name] for k, name in enumerate(CLASSES)}
    (out / "imagenet_class_index.json").write_text(json.dumps(index, indent=1) + "\n")


def scene_layout(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int) -> tuple:
    """(items, labels, corners) of one scene."""
    n = rng.integers(ITEMS_PER_SCENE[0], ITEMS_PER_SCENE[1] + 1)
    pick = rng.integers(0, len(images), n)
    corners = rng.integers(0, size - images.shape[1] + 1, (n, 2))
    return images[pick], labels[pick], corners


def write_ade20k(out: Path, fmnist: Path, scenes: tuple[int, int], size: int, seed: int, workers: int) -> None:
    tasks = []
    for code, (split, prefix, source) in enumerate(ADE_SPLITS):
        images, labels = load_split(fmnist, source)
        for kind in ("images", "annotations"):
            (out / kind / split).mkdir(parents=True)
        names = [f"ADE_{prefix}_{j + 1:08d}" for j in range(scenes[code])]
        paths = [(out / "images" / split / f"{n}.jpg", out / "annotations" / split / f"{n}.png") for n in names]
        # one generator per scene: a scene does not depend on how many come before it
        layouts = [
            scene_layout(np.random.default_rng([seed, code, j]), images, labels, size) for j in range(len(names))
        ]
        tasks += [((code, paths[s], layouts[s], size), s.stop - s.start) for s in _chunks(len(names))]
    counts = np.zeros((len(ADE_SPLITS), len(CLASSES) + 1, 2), np.int64)
    for code, chunk in run_parallel(_write_scenes, tasks, workers=workers, desc="embedded ade20k", unit="scene"):
        counts[code] += chunk
    with (out / "objectInfo150.txt").open("w", newline="") as f:
        table = csv.writer(f, delimiter="\t")
        table.writerow(["Idx", "Ratio", "Train", "Val", "Name"])
        pixels = counts[:, :, 0].sum(0)
        for k, name in enumerate(CLASSES, start=1):
            table.writerow([k, f"{pixels[k] / pixels.sum():.4f}", counts[0, k, 1], counts[1, k, 1], name])


# ---- replace-whole folders ------------------------------------------------------------------------


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def missing_parts(final: Path, expected: dict[str, int]) -> list[str]:
    """The parts of a written folder (relative path -> how many files it holds) that lost or gained files."""
    have = {
        part: count_files(final / part) if (final / part).is_dir() else int((final / part).is_file())
        for part in expected
    }
    return [f"{part} has {have[part]} of {n} files" for part, n in expected.items() if have[part] != n]


def write_folder(final: Path, stamp: dict, fill: Callable[[Path], None], expected: dict[str, int]) -> str:
    """fill(tmp) a sibling folder, stamp it, and rename it into `final`, unless `final` is that already, whole
    (`expected`: files per part); returns what was done."""
    mark = final / STAMP
    if mark.is_file() and json.loads(mark.read_text()) == stamp:
        damage = missing_parts(final, expected)
        if not damage:
            return "up to date (same params)"
        done = f"written again: {'; '.join(damage)}"  # a part deleted or changed since: the whole is remade
    else:
        done = "written"
    if final.exists() and not mark.is_file():
        raise UserError(f"{final}: exists and was not written by `nepa prepare embedded`; move it or set data.root")
    tmp, old = final.with_name(f".{final.name}.partial"), final.with_name(f".{final.name}.old")
    for leftover in (tmp, old):  # from an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return done


def prepare_embedded(params: Params, fashion_mnist_dir: str | None = None) -> None:
    """Both layouts under {data.root}/raw; `fashion_mnist_dir` overrides data.fashion_mnist_dir."""
    d = params.data
    fmnist = find_fashion_mnist(fashion_mnist_dir or d.fashion_mnist_dir)
    raw = Path(d.root) / "raw"
    source = "Fashion-MNIST (Debian dataset-fashion-mnist)"
    imagenet = {"source": source, "images": list(d.embedded_images), "image_size": d.embedded_image_size}
    ade20k = {
        "source": source,
        "scenes": list(d.embedded_scenes),
        "scene_size": d.embedded_scene_size,
        "seed": params.seed,
    }
    (train, val), (training, validation) = d.embedded_images, d.embedded_scenes
    jobs: list[tuple[Path, dict, Callable[[Path], None], dict[str, int]]] = [
        (
            raw / "imagenet",
            imagenet,
            lambda out: write_imagenet(out, fmnist, d.embedded_images, d.embedded_image_size, d.workers),
            {"train": train, "val": val, "imagenet_class_index.json": 1},
        ),
        (
            raw / "ADEChallengeData2016",
            ade20k,
            lambda out: write_ade20k(out, fmnist, d.embedded_scenes, d.embedded_scene_size, params.seed, d.workers),
            {
                "images/training": training,
                "annotations/training": training,
                "images/validation": validation,
                "annotations/validation": validation,
                "objectInfo150.txt": 1,
            },
        ),
    ]
    for final, stamp, fill, expected in jobs:
        print(f"{final}: {write_folder(final, stamp, fill, expected)}")
