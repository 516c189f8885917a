"""Small, format-exact stand-ins of the dataset forms labs hold, each written by the library that writes the real one.

ImageNet: the ILSVRC2012 tars and devkit (tarfile, scipy.io.savemat: benchmarks/ilsvrc_archives.py), Kaggle's
layout (csv), a Hugging Face copy (`datasets`: save_to_disk, and to_parquet as the hub's data/*.parquet); ADE20K:
the ADEChallengeData2016 folder, its zip (zipfile) and scene_parse_150 (`datasets`). Images are tiny JPEGs (PIL),
each different, so that a row can be followed from any form to the shards.
"""

from __future__ import annotations

import csv
import io
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ilsvrc_archives import write_ilsvrc2012

from nepa.data.imagenet_forms import standard_classes


def jpeg(i: int, size: tuple[int, int] = (8, 8)) -> bytes:
    """A small JPEG no other index gives (its comment says which)."""
    out = io.BytesIO()
    Image.new("RGB", size, (i % 251, (i // 251) % 251, 40 + i % 7)).save(out, "JPEG", quality=90, comment=str(i))
    return out.getvalue()


def hf_names() -> list[str]:
    """The hub's ImageNet-1K ClassLabel names: the devkit's words in sorted-synset order, the second 'crane'
    (the machine, n03126707) renamed 'crane2' as the hub's classes.py does (`datasets` refuses duplicates)."""
    words = list(standard_classes()[1])
    second = [k for k, w in enumerate(words) if w == "crane"][1]
    words[second] = "crane2"
    return words


@dataclass
class ImageNetStandin:
    """One set of images in every ImageNet form; `truth` is each key's synset id."""

    wnids: list[str]  # the classes, sorted
    words: dict[str, str]
    ids: dict[str, int]  # ILSVRC2012_ID: a shuffled numbering
    train: dict[str, list[tuple[str, bytes]]]
    val: list[tuple[str, bytes]]  # (wnid, JPEG) of ILSVRC2012_val_<i + 1>
    truth: dict[str, str] = field(default_factory=dict)

    def val_name(self, i: int) -> str:
        return f"ILSVRC2012_val_{i + 1:08d}.JPEG"

    def rows(self) -> list[tuple[str, str, str, bytes]]:
        """(split, wnid, file name, JPEG) of every image."""
        out = [("train", w, name, data) for w, files in self.train.items() for name, data in files]
        return out + [("val", w, self.val_name(i), data) for i, (w, data) in enumerate(self.val)]


def imagenet_standin(wnids: list[str], words: dict[str, str], extra: int = 2, seed: int = 0) -> ImageNetStandin:
    """One train image per class (`extra` more in the first classes), one val image per class in shuffled order."""
    rng = np.random.default_rng(seed)
    ids = {w: int(i) + 1 for w, i in zip(wnids, rng.permutation(len(wnids)), strict=True)}
    train = {
        w: [(f"{w}_{n}.JPEG", jpeg(k * 4 + n)) for n in range(1 + (extra if k < 3 else 0))] for k, w in enumerate(wnids)
    }
    val = [(wnids[int(k)], jpeg(100_000 + i)) for i, k in enumerate(rng.permutation(len(wnids)))]
    s = ImageNetStandin(sorted(wnids), words, ids, train, val)
    s.truth = {f"{split}/{w}/{name}": w for split, w, name, _ in s.rows()}
    return s


def write_tars(s: ImageNetStandin, folder: Path) -> Path:
    write_ilsvrc2012(folder, s.train, s.val, s.ids, s.words)
    return folder


def write_kaggle(s: ImageNetStandin, folder: Path) -> Path:
    """imagenet-object-localization-challenge/: ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}, the LOC files."""
    data = folder / "ILSVRC" / "Data" / "CLS-LOC"
    for split, w, name, jpg in s.rows():
        path = data / split / (w if split == "train" else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpg)
    with (folder / "LOC_val_solution.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ImageId", "PredictionString"])
        for i, (w, _) in enumerate(s.val):  # a class and its boxes, as Kaggle writes them
            out.writerow([s.val_name(i).removesuffix(".JPEG"), f"{w} 10 20 100 200 {w} 5 5 50 60 "])
    (folder / "LOC_synset_mapping.txt").write_text("".join(f"{w} {s.words[w]}\n" for w in s.wnids))
    return folder


def hf_dataset_dict(s: ImageNetStandin, names: list[str]) -> object:
    """The Hugging Face copy: image {bytes, path}, label = ClassLabel(names) (sorted-synset order); a test
    split without labels (-1), as the hub's."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    index = {w: k for k, w in enumerate(s.wnids)}

    def split(rows: list[tuple[str, str, str, bytes]]) -> datasets.Dataset:
        images = [{"bytes": data, "path": name} for _, _, name, data in rows]
        return datasets.Dataset.from_dict({"image": images, "label": [index[w] for _, w, _, _ in rows]}, features)

    rows = s.rows()
    test = datasets.Dataset.from_dict(
        {"image": [{"bytes": jpeg(999_999), "path": "test_1.JPEG"}], "label": [-1]}, features
    )
    return datasets.DatasetDict(
        train=split([r for r in rows if r[0] == "train"]),
        validation=split([r for r in rows if r[0] == "val"]),
        test=test,
    )


def write_hf(dataset_dict: object, folder: Path, parquet: bool, files_per_split: int = 2) -> Path:
    """save_to_disk, or the hub's Parquet layout data/<split>-NNNNN-of-NNNNN.parquet (row groups of 16 rows)."""
    if not parquet:
        dataset_dict.save_to_disk(
            str(folder), num_shards={s: min(files_per_split, len(d)) for s, d in dataset_dict.items()}
        )
        return folder
    (folder / "data").mkdir(parents=True)
    for split, ds in dataset_dict.items():
        n = min(files_per_split, len(ds))
        for k in range(n):
            ds.shard(n, k, contiguous=True).to_parquet(
                str(folder / "data" / f"{split}-{k:05d}-of-{n:05d}.parquet"), batch_size=16
            )
    return folder


# ---- ADE20K ----------------------------------------------------------------------------------------------


ADE_CLASSES = ["wall", "building, edifice", "sky"]


def ade_scenes(counts: tuple[int, int] = (3, 2)) -> dict[str, list[tuple[str, bytes, bytes]]]:
    """{split: [(file stem, JPEG, PNG mask)]}: masks of class indices 0..3, at their image's size."""
    out = {}
    for split, prefix, n in (("training", "train", counts[0]), ("validation", "val", counts[1])):
        rows = []
        for j in range(n):
            size = (12 + j, 10)
            mask = Image.fromarray(np.arange(size[0] * size[1], dtype=np.uint8).reshape(size[1], size[0]) % 4, "L")
            png = io.BytesIO()
            mask.save(png, "PNG")
            rows.append((f"ADE_{prefix}_{j + 1:08d}", jpeg(200_000 + 10 * j + n, size), png.getvalue()))
        out[split] = rows
    return out


def object_info() -> str:
    return "Idx\tRatio\tTrain\tVal\tName\n" + "".join(f"{k}\t0.1\t1\t1\t{n}\n" for k, n in enumerate(ADE_CLASSES, 1))


def write_ade_zip(scenes: dict, path: Path, drop: str | None = None) -> Path:
    """ADEChallengeData2016.zip as distributed (deflated, under ADEChallengeData2016/), less the member `drop`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ADEChallengeData2016/objectInfo150.txt", object_info())
        for split, rows in scenes.items():
            for stem, image, mask in rows:
                for name, data in (
                    (f"ADEChallengeData2016/images/{split}/{stem}.jpg", image),
                    (f"ADEChallengeData2016/annotations/{split}/{stem}.png", mask),
                ):
                    if name != drop:
                        z.writestr(name, data)
    return path


def write_ade_folder(scenes: dict, folder: Path) -> Path:
    for split, rows in scenes.items():
        for stem, image, mask in rows:
            for kind, name, data in (("images", f"{stem}.jpg", image), ("annotations", f"{stem}.png", mask)):
                (folder / kind / split).mkdir(parents=True, exist_ok=True)
                (folder / kind / split / name).write_bytes(data)
    (folder / "objectInfo150.txt").write_text(object_info())
    return folder


def scene_parse_150(scenes: dict) -> object:
    """Hugging Face's scene_parse_150 (config scene_parsing): image, annotation, scene_category; test unannotated."""
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "annotation": datasets.Image(),
            "scene_category": datasets.ClassLabel(names=["bathroom", "bedroom"]),
        }
    )

    def split(rows: list) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "image": [{"bytes": image, "path": f"{stem}.jpg"} for stem, image, _ in rows],
                "annotation": [{"bytes": mask, "path": f"{stem}.png"} for stem, _, mask in rows],
                "scene_category": [j % 2 for j in range(len(rows))],
            },
            features,
        )

    test = datasets.Dataset.from_dict(
        {"image": [{"bytes": jpeg(7), "path": "ADE_test_00000001.jpg"}], "annotation": [None], "scene_category": [0]},
        features,
    )
    return datasets.DatasetDict(train=split(scenes["training"]), validation=split(scenes["validation"]), test=test)
