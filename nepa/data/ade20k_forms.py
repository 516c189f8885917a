"""ADE20K (SceneParsing, 150 classes) as labs hold it: each form recognised at --src and listed for the shards.

  form                          what --src (data.ade20k_src) points at
  ADEChallengeData2016 folder   images/{training,validation}/*.jpg, annotations/{training,validation}/<same
                                name>.png, objectInfo150.txt (the class table)
  ADEChallengeData2016.zip      the zip as distributed (or the folder holding it), read in place
  Hugging Face scene_parse_150  a save_to_disk folder or its Parquet files: `image` and `annotation` Image
                                columns (the zip's JPEG and PNG bytes); the test split has no annotations and
                                is left out

Keys are `split/<image file name>` in every form, and rows are sorted by key except in a Hugging Face copy,
which keeps its row order. Masks: 0 is "other" (ignored by the loss), 1..150 the classes. The manifest's
classes are objectInfo150.txt's rows; a Hugging Face copy carries no class table, so its manifest lists the 150
indices without names.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from pathlib import Path

from nepa.data import hf_copy
from nepa.data.sources import (
    IMAGE_EXTENSIONS,
    Inventory,
    Item,
    Problems,
    TableRow,
    ZipMember,
    found_at,
    stamp,
)
from nepa.errors import UserError
from nepa.layout import SPLITS as DATASET_SPLITS

SPLITS = DATASET_SPLITS["ade20k"]
ZIP = "ADEChallengeData2016.zip"
HF_SPLITS = {"train": "training", "validation": "validation"}
NUM_CLASSES = 150
ACCEPTED = (
    "the ADEChallengeData2016 folder (images/, annotations/), ADEChallengeData2016.zip (or the folder holding it), "
    "or Hugging Face's scene_parse_150 (a save_to_disk folder or its Parquet files); docs/datasets.md shows each"
)


def class_table(text: str) -> list[dict[str, object]]:
    """objectInfo150.txt (tab-separated Idx Ratio Train Val Name) as the manifest's classes."""
    return [
        {"index": int(row["Idx"]), "id": row["Idx"], "name": row["Name"]}
        for row in csv.DictReader(io.StringIO(text), delimiter="\t")
    ]


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise UserError(f"{path}: {what} not found; the ADEChallengeData2016 folder holds images/ and annotations/")


def scan_folder(src: Path, skip_bad: bool) -> Inventory:
    """images/{training,validation}/*.jpg with annotations/{training,validation}/<same name>.png."""
    info = src / "objectInfo150.txt"
    inventory = Inventory("ade20k", src, class_table(info.read_text()) if info.is_file() else [], {}, {})
    for split in SPLITS:
        for kind in ("images", "annotations"):
            _require_dir(src / kind / split, f"{kind}/{split}/ folder")
        problems, items = Problems(skip_bad), []
        entries = os.scandir(src / "images" / split)
        images = sorted((e for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=_name)
        for e in images:
            mask = src / "annotations" / split / (Path(e.name).stem + ".png")
            if not mask.is_file():
                problems.report(mask, f"missing annotation of {e.path}", "restore it or remove the image")
                continue
            items.append(Item(f"{split}/{e.name}", e.path, stamp(e) + stamp(mask), mask=str(mask)))
        inventory.splits[split], inventory.problems[split] = items, problems
    return inventory


def scan_zip(path: Path, skip_bad: bool) -> Inventory:
    """The zip's members (under ADEChallengeData2016/ as distributed), read in place."""
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename: i for i in z.infolist() if not i.is_dir()}
            top = next((m.group(1) for n in members if (m := re.match(r"(.*?)images/training/", n))), None)
            if top is None:
                raise UserError(f"{path}: no images/training/ inside; is it {ZIP}?")
            info = members.get(f"{top}objectInfo150.txt")
            classes = class_table(z.read(info).decode()) if info else []
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a readable zip ({e}); download {ZIP} again") from None
    archive, base = str(path), stamp(path)
    inventory = Inventory("ade20k", path, classes, {}, {})
    for split in SPLITS:
        problems, items = Problems(skip_bad), []
        folder = f"{top}images/{split}/"
        names = sorted(n for n in members if n.startswith(folder) and n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise UserError(f"{path}: no images under {folder} inside; download {ZIP} again")
        for name in names:
            file = name.removeprefix(folder)
            mask = f"{top}annotations/{split}/{Path(file).stem}.png"
            if mask not in members:
                problems.report(f"{path}:{mask}", f"missing annotation of {file}", f"download {ZIP} again")
                continue
            items.append(
                Item(
                    f"{split}/{file}",
                    ZipMember(archive, name),
                    (*base, members[name].CRC, members[mask].CRC),
                    mask=ZipMember(archive, mask),
                )
            )
        inventory.splits[split], inventory.problems[split] = items, problems
    return inventory


def scan_hf(src: Path, skip_bad: bool) -> Inventory:
    """scene_parse_150's image and annotation columns, row by row."""
    files = hf_copy.split_files(src)
    hf_copy.require_splits(src, files, tuple(HF_SPLITS))
    classes = [{"index": k, "id": str(k), "name": ""} for k in range(1, NUM_CLASSES + 1)]
    inventory = Inventory("ade20k", src, classes, {}, {})
    for hf_split, split in HF_SPLITS.items():
        items = []
        for file in files[hf_split]:
            hf_copy.check_columns(file, {"image": "image", "annotation": "image"})
            base = stamp(file)
            for row, path in enumerate(hf_copy.column_values(file, "image", "path")):
                name = path.rsplit("/", 1)[-1] if path else f"{Path(file).stem}-{row:07d}.jpg"
                image, mask = TableRow(file, row, "image"), TableRow(file, row, "annotation")
                items.append(Item(f"{split}/{name}", image, (*base, row), mask=mask))
        inventory.splits[split], inventory.problems[split] = items, Problems(skip_bad)
    return inventory


def scan(src: Path, *, skip_bad: bool) -> Inventory:
    """The form at `src`, said in one line, listed."""
    if src.is_dir() and (src / "images").is_dir() and (src / "annotations").is_dir():
        print(f"{src}: the ADEChallengeData2016 folder")
        return scan_folder(src, skip_bad)
    zipped = src if src.is_file() and zipfile.is_zipfile(src) else src / ZIP
    if zipped.is_file():
        print(f"{zipped}: {ZIP}, read in place")
        return scan_zip(zipped, skip_bad)
    if hf_copy.is_copy(src):
        print(f"{src}: a Hugging Face scene_parse_150 copy ({hf_copy.layout(src)}), read in place")
        return scan_hf(src, skip_bad)
    raise UserError(f"{src}: found {found_at(src)}; nepa reads ADE20K as {ACCEPTED}")
