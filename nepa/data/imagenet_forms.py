"""ImageNet-1K as labs hold it: each form recognised at --src and listed, with the standard labels, for the shards.

  form                 what --src (data.imagenet_src) points at
  ImageFolder tree     a folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val sorted, e.g. by valprep.sh),
                       or with val/ flat and its ground truth beside train/: LOC_val_solution.csv or the devkit
                       (ILSVRC2012_devkit_t12.tar.gz, or that folder extracted)
  Kaggle's layout      the competition folder: ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}, LOC_val_solution.csv,
                       LOC_synset_mapping.txt
  ILSVRC2012 tars      the folder holding ILSVRC2012_img_train.tar (a tar of 1,000 per-class tars),
                       ILSVRC2012_img_val.tar (50,000 JPEGs) and ILSVRC2012_devkit_t12.tar.gz, read in place
  Hugging Face copy    a save_to_disk folder (dataset_dict.json; train/ and validation/ Arrow files) or the hub's
                       Parquet files (data/train-*.parquet, data/validation-*.parquet): image {bytes, path} and a
                       ClassLabel `label`; the test split has no labels and is left out

Labels are the standard ImageNet class index in every form: the classes' synset ids (wnids) sorted, the order
of torchvision's ImageNet and ImageFolder, of timm, and of Hugging Face's ClassLabel. The ids come from the
source: the class folders; for the tars the devkit's meta.mat (its 1,000 leaf synsets) and, for val, its
ground truth, whose ILSVRC2012_IDs are mapped to wnids through meta.mat (an ILSVRC2012_ID is not the class
index); for Kaggle LOC_val_solution.csv; for a Hugging Face copy its ClassLabel, whose names are compared
position by position with the devkit's words (timm ships them) before its numbers are taken as the standard
index (the hub's copy renames the second 'crane' to 'crane2'; a renamed class is accepted, a moved one is not).

Class folders that are not synset ids (label numbers, class names: what exporting a Hugging Face copy folder
by folder gives) are refused, and so is a ClassLabel that is not ImageNet-1K's in the standard order: nepa
never guesses an order. data.class_index states it: `standard` (folders named 0..999 by the standard index,
as the Hugging Face label numbers are), or a JSON file mapping each folder or ClassLabel name to its synset id,
{"0": "n01440764", ...}; Keras' imagenet_class_index.json ({"0": ["n01440764", "tench"], ...}) works as it is.

Keys are `split/<wnid>/<file name>` in every form, so the tars, Kaggle's layout and the extracted, sorted tree
give the same rows in the same order (sorted keys). A Hugging Face copy keeps its own row order, so that each
shard reads a run of row groups.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nepa.data import hf_copy
from nepa.data.parallel import run_parallel
from nepa.data.sources import (
    IMAGE_EXTENSIONS,
    Inventory,
    Item,
    Problems,
    TableRow,
    TarMember,
    by_key,
    compressed,
    found_at,
    list_tar,
    stamp,
    where,
)
from nepa.errors import UserError, require_file

SYNSET = re.compile(r"n\d{8}")
TRAIN_TAR, VAL_TAR, DEVKIT_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
META, TRUTH = "data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"  # inside the devkit
VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")
HF_SPLITS = {"train": "train", "validation": "val"}
MAX_RENAMED = 10  # ClassLabel names that may differ from the devkit's words (renamed, never moved)
ACCEPTED = (
    "an ImageFolder tree (train/<wnid>/, val/<wnid>/ or val/ flat beside LOC_val_solution.csv or the devkit), "
    f"Kaggle's (ILSVRC/Data/CLS-LOC/ beside LOC_val_solution.csv), the ILSVRC2012 tars ({TRAIN_TAR}, {VAL_TAR}, "
    f"{DEVKIT_TAR} in one folder) or a Hugging Face copy (a save_to_disk folder or its Parquet files); "
    "docs/datasets.md shows each"
)
CLASS_INDEX_FIX = (
    "set data.class_index: standard if they are the standard ImageNet-1K indices 0-999 (Hugging Face's label "
    "numbers), or a JSON file mapping each to its synset id (docs/datasets.md)"
)


# ---- class ids and names --------------------------------------------------------------------------------


@functools.cache
def standard_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ImageNet-1K's 1,000 synset ids sorted (the standard index) and the devkit's words for each (timm's copy)."""
    from timm.data import ImageNetInfo  # timm is a dependency anyway; only ClassLabels and `standard` need this

    info = ImageNetInfo("imagenet-1k")
    return tuple(info.label_names()), tuple(info.label_descriptions())


def load_class_index(value: str) -> dict[str, tuple[str, str]]:
    """data.class_index: each source class name (folder, label number, ClassLabel name) -> (wnid, class name)."""
    if value == "standard":
        wnids, words = standard_classes()
        return {str(k): (w, n) for k, (w, n) in enumerate(zip(wnids, words, strict=True))}
    path = require_file(
        value, "data.class_index file", "point it at a JSON file mapping class names to synset ids, or set `standard`"
    )
    shape = 'data.class_index maps names to synset ids, {"0": "n01440764", ...}'
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({e}); {shape}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a JSON object; {shape}")
    out: dict[str, tuple[str, str]] = {}
    for name, value_ in raw.items():
        wnid, label = (value_, "") if isinstance(value_, str) else ((value_ or [None])[0], "")
        if isinstance(value_, list) and len(value_) > 1:
            label = str(value_[1])
        if not isinstance(wnid, str) or not SYNSET.fullmatch(wnid):
            raise UserError(f"{path}: {name!r} maps to {value_!r}, not a synset id (n and 8 digits); fix that entry")
        out[str(name)] = (wnid, label)
    seen: dict[str, str] = {}
    for name, (wnid, _) in out.items():
        if wnid in seen:
            raise UserError(f"{path}: {seen[wnid]!r} and {name!r} both map to {wnid}; each class needs its own id")
        seen[wnid] = name
    return out


def _few(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")


def folder_wnids(parent: Path, folders: list[str], class_index: str | None) -> dict[str, tuple[str, str]]:
    """Each class folder's (wnid, name from the mapping); folders that are not synset ids need data.class_index."""
    if class_index is None:
        other = [f for f in folders if not SYNSET.fullmatch(f)]
        if other:
            raise UserError(
                f"{parent}: {len(other)} of {len(folders)} class folders are not synset ids ({_few(other)}), "
                f"so their class order is unknown; {CLASS_INDEX_FIX}"
            )
        return {f: (f, "") for f in folders}
    mapping = load_class_index(class_index)
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise UserError(
            f"{parent / missing[0]}: not in data.class_index {class_index} ({len(missing)} folders are not, "
            f"{_few(missing)}); map every class folder to its synset id"
        )
    return {f: mapping[f] for f in folders}


def _names_beside(folder: Path, wnids: list[str]) -> dict[str, str]:
    """Class names from imagenet_class_index.json (Keras) or LOC_synset_mapping.txt (Kaggle) in `folder`."""
    names: dict[str, str] = {}
    if (folder / "imagenet_class_index.json").is_file():
        names.update(dict(json.loads((folder / "imagenet_class_index.json").read_text()).values()))
    elif (folder / "LOC_synset_mapping.txt").is_file():
        lines = (folder / "LOC_synset_mapping.txt").read_text().splitlines()
        names.update(line.strip().split(" ", 1) for line in lines if " " in line.strip())
    return {w: names.get(w, "").strip() for w in wnids}


def class_table(wnids: list[str], names: dict[str, str]) -> list[dict[str, object]]:
    """The manifest's classes: standard index, synset id, name (the id where the source has none)."""
    return [{"index": k, "id": w, "name": names.get(w) or w} for k, w in enumerate(wnids)]


# ---- the devkit ------------------------------------------------------------------------------------------


@dataclass
class Devkit:
    wnid_of: dict[int, str]  # ILSVRC2012_ID -> wnid, the 1,000 leaf synsets of meta.mat
    words: dict[str, str]  # wnid -> its words ("tench, Tinca tinca")
    truth: list[int]  # the ILSVRC2012_ID of validation image i + 1
    path: Path

    @property
    def truth_file(self) -> str:
        return f"{self.path}:{DEVKIT_DIR}/{TRUTH}" if self.path.is_file() else str(self.path / TRUTH)


def find_devkit(folder: Path) -> Path | None:
    for path in (folder / DEVKIT_TAR, folder / DEVKIT_DIR):
        if path.exists():
            return path
    return None


def devkit_in(folder: Path, missing: str) -> Devkit:
    """The devkit in `folder`, read; `missing` is the one line said when there is none."""
    devkit = find_devkit(folder)
    if devkit is None:
        raise UserError(missing)
    return read_devkit(devkit)


def read_devkit(path: Path) -> Devkit:
    """meta.mat and the validation ground truth, from the devkit's .tar.gz or its extracted folder."""
    fix = f"download {DEVKIT_TAR} again (it holds {META} and {TRUTH})"
    files: dict[str, bytes] = {}
    try:
        if path.is_dir():
            files = {n: (path / n).read_bytes() for n in (META, TRUTH) if (path / n).is_file()}
        else:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    for name in (META, TRUTH):
                        if member.isreg() and member.name.endswith(name):
                            files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UserError(f"{path}: not a readable devkit archive ({e}); {fix}") from None
    for name in (META, TRUTH):
        if name not in files:
            raise UserError(f"{path}: no {name} inside; {fix}")
    import scipy.io  # only the devkit's meta.mat (MATLAB v5) needs it

    try:
        synsets = scipy.io.loadmat(io.BytesIO(files[META]), squeeze_me=True)["synsets"]
        leaves = synsets[synsets["num_children"] == 0]
        wnid_of = {int(i): str(w) for i, w in zip(leaves["ILSVRC2012_ID"], leaves["WNID"], strict=True)}
        words = {str(w): str(x) for w, x in zip(leaves["WNID"], leaves["words"], strict=True)}
        truth = [int(line) for line in files[TRUTH].decode().split()]
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: its {META} or ground truth is not the devkit's ({e}); {fix}") from None
    unknown = sorted(set(truth) - set(wnid_of))
    if unknown:
        raise UserError(f"{path}: its ground truth names ILSVRC2012_ID {unknown[0]}, not a class of its {META}; {fix}")
    return Devkit(wnid_of, words, truth, path)


def val_truth(folder: Path) -> tuple[dict[str, str], str]:
    """Validation image name (no extension) -> wnid, from LOC_val_solution.csv or the devkit in `folder`."""
    solution = folder / "LOC_val_solution.csv"
    if solution.is_file():
        with solution.open(newline="") as f:
            try:
                return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}, str(solution)
            except (KeyError, IndexError, AttributeError):
                raise UserError(
                    f"{solution}: not Kaggle's validation solution (ImageId,PredictionString rows); restore it"
                ) from None
    kit = devkit_in(
        folder,
        f"{folder}: validation images without class folders and no ground truth beside them; put "
        f"LOC_val_solution.csv or {DEVKIT_TAR} in {folder}, or sort val/ into synset folders (valprep.sh)",
    )
    return {f"ILSVRC2012_val_{i + 1:08d}": kit.wnid_of[t] for i, t in enumerate(kit.truth)}, kit.truth_file


# ---- folder trees (ImageFolder, Kaggle) -----------------------------------------------------------------


def _images(folder: Path) -> list[os.DirEntry[str]]:
    return sorted(
        (e for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)),
        key=lambda e: e.name,
    )


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def scan_tree(src: Path, train: Path, val: Path, beside: Path, skip_bad: bool, class_index: str | None) -> Inventory:
    """train/<class>/ and val/<class>/ (or val/ flat with its ground truth in `beside`)."""
    folders = _subfolders(train)
    if not folders:
        raise UserError(f"{train}: no class folders; ImageNet train/ holds one folder per synset")
    classes = folder_wnids(train, folders, class_index)
    wnids = sorted(w for w, _ in classes.values())
    index = {w: k for k, w in enumerate(wnids)}
    names = {w: n for w, n in classes.values() if n} or _names_beside(beside, wnids)
    inventory = Inventory("imagenet", src, class_table(wnids, names), {}, {})
    problems, items = Problems(skip_bad), []
    for folder in folders:
        wnid = classes[folder][0]
        files = _images(train / folder)
        if not files:
            problems.report(train / folder, "empty class folder", "restore its images or remove the folder")
        items += [Item(f"train/{wnid}/{e.name}", e.path, stamp(e), label=index[wnid]) for e in files]
    inventory.splits["train"], inventory.problems["train"] = sorted(items, key=by_key), problems

    problems, items = Problems(skip_bad), []
    val_folders = _subfolders(val)
    if val_folders:
        for folder, (wnid, _) in folder_wnids(val, val_folders, class_index).items():
            if wnid not in index:
                raise UserError(f"{val / folder}: class not in train/; remove it or restore its train/ folder")
            items += [Item(f"val/{wnid}/{e.name}", e.path, stamp(e), label=index[wnid]) for e in _images(val / folder)]
    else:
        truth, truth_file = val_truth(beside)
        for e in _images(val):
            wnid = truth.get(e.name.rsplit(".", 1)[0])
            if wnid is None:
                problems.report(e.path, f"no ground truth in {truth_file}", "use the ground truth of these images")
            elif wnid not in index:
                raise UserError(f"{truth_file}: {e.name} is of class {wnid}, which train/ does not have")
            else:
                items.append(Item(f"val/{wnid}/{e.name}", e.path, stamp(e), label=index[wnid]))
    if not items:
        raise UserError(f"{val}: no validation images; restore val/")
    inventory.splits["val"], inventory.problems["val"] = sorted(items, key=by_key), problems
    return inventory


def scan_folder(src: Path, skip_bad: bool, workers: int, class_index: str | None) -> Inventory:
    return scan_tree(src, src / "train", src / "val", src, skip_bad, class_index)


def scan_kaggle(src: Path, skip_bad: bool, workers: int, class_index: str | None) -> Inventory:
    data = src / "ILSVRC" / "Data" / "CLS-LOC"
    return scan_tree(src, data / "train", data / "val", src, skip_bad, class_index)


# ---- the ILSVRC2012 tars --------------------------------------------------------------------------------


def _list_inner(task: tuple[TarMember, str]) -> tuple[str, TarMember, list[TarMember], str | None]:
    """The members of one per-class tar inside the train tar (a pool task)."""
    outer, wnid = task
    members, problem = list_tar(outer.archive, outer.offset, outer.size, prefix=f"{outer.member}:")
    return wnid, outer, members, problem


def _is_image(member: TarMember) -> bool:
    return member.member.lower().endswith(IMAGE_EXTENSIONS)


def scan_tars(src: Path, skip_bad: bool, workers: int, class_index: str | None) -> Inventory:
    """The distribution tars, read in place: headers listed here (the per-class tars in parallel)."""
    train_tar, val_tar = src / TRAIN_TAR, src / VAL_TAR
    for tar in (train_tar, val_tar):
        require_file(tar, "ILSVRC2012 tar", f"the tar form needs {TRAIN_TAR}, {VAL_TAR} and {DEVKIT_TAR} in {src}")
        kind = compressed(tar)
        if kind:
            raise UserError(
                f"{tar}: {kind}-compressed; nepa reads tars in place, which needs them as distributed "
                "(uncompressed): decompress it (it stays one file)"
            )
    kit = devkit_in(
        src,
        f"{src / DEVKIT_TAR}: not found; the labels come from the devkit (meta.mat and the validation ground "
        f"truth): put {DEVKIT_TAR} beside the image tars",
    )
    wnids = sorted(kit.words)
    index = {w: k for k, w in enumerate(wnids)}
    inventory = Inventory("imagenet", src, class_table(wnids, kit.words), {}, {})
    archive = str(train_tar)
    base = stamp(archive)

    problems, items = Problems(skip_bad), []
    outer, problem = list_tar(archive)
    if problem:
        problems.report(train_tar, problem, "download it again")
    tasks = []
    for member in outer:
        wnid = member.member.rsplit("/", 1)[-1].removesuffix(".tar")
        if not member.member.endswith(".tar") or wnid not in index:
            raise UserError(
                f"{where(member)}: not a per-class tar of the devkit's classes ({kit.path}); "
                f"is {TRAIN_TAR} ImageNet-1K's?"
            )
        tasks.append(((member, wnid), 1))
    for wnid, tar, members, problem in run_parallel(
        _list_inner, tasks, workers=workers, desc=f"listing {TRAIN_TAR}", unit="tar"
    ):
        if problem:
            problems.report(where(tar), problem, f"download {TRAIN_TAR} again")
        images = [m for m in members if _is_image(m)]
        if not images and not problem:
            problems.report(where(tar), "empty class tar", f"download {TRAIN_TAR} again")
        items += [
            Item(
                f"train/{wnid}/{m.member.rsplit(':', 1)[-1].rsplit('/', 1)[-1]}",
                m,
                (*base, m.offset, m.size),
                label=index[wnid],
            )
            for m in images
        ]
    inventory.splits["train"], inventory.problems["train"] = sorted(items, key=by_key), problems

    problems, items = Problems(skip_bad), []
    members, problem = list_tar(str(val_tar))
    if problem:
        problems.report(val_tar, problem, "download it again")
    base = stamp(val_tar)
    for m in filter(_is_image, members):
        name = m.member.rsplit("/", 1)[-1]
        number = VAL_NUMBER.match(name)
        k = int(number.group(1)) if number else 0
        if not 0 < k <= len(kit.truth):
            problems.report(
                where(m),
                f"no ground truth: {kit.truth_file} lists {len(kit.truth):,} images",
                "use the devkit of these images",
            )
            continue
        wnid = kit.wnid_of[kit.truth[k - 1]]
        items.append(Item(f"val/{wnid}/{name}", m, (*base, m.offset, m.size), label=index[wnid]))
    inventory.splits["val"], inventory.problems["val"] = sorted(items, key=by_key), problems
    return inventory


# ---- Hugging Face copies --------------------------------------------------------------------------------


def hf_wnids(names: list[str] | None, file: str, class_index: str | None) -> list[str]:
    """The synset id of each ClassLabel number; refuses names that do not prove their order."""
    if class_index == "standard":
        return list(standard_classes()[0])
    if names is None:
        raise UserError(
            f"{file}: its label column has no ClassLabel names (no Hugging Face features with it), so "
            f"its class order is unknown; {CLASS_INDEX_FIX}"
        )
    if class_index is not None:
        mapping = load_class_index(class_index)
        missing = [n for n in names if n not in mapping]
        if missing:
            raise UserError(
                f"{file}: ClassLabel names not in data.class_index {class_index}: {_few(missing)}; "
                "map every name to its synset id"
            )
        return [mapping[n][0] for n in names]
    if all(SYNSET.fullmatch(n) for n in names):
        return list(names)
    wnids, words = standard_classes()
    renamed = [k for k, (n, w) in enumerate(zip(names, words, strict=False)) if n != w]
    moved = [k for k in renamed if names[k] in set(words)]
    if len(names) == len(words) and len(renamed) <= MAX_RENAMED and not moved:
        return list(wnids)
    k = (moved or renamed or [min(len(names), len(words)) - 1])[0]
    raise UserError(
        f"{file}: its ClassLabel ({len(names)} names) is not ImageNet-1K's in the standard order (name {k} is "
        f"{names[k]!r}, the devkit's word there is {words[k]!r}); {CLASS_INDEX_FIX}"
    )


def _hf_rows(file: str) -> tuple[str, list, list]:
    """A data file's labels and image paths (a pool task: only those columns are read)."""
    return file, hf_copy.column_values(file, "label"), hf_copy.column_values(file, "image", "path")


def scan_hf(src: Path, skip_bad: bool, workers: int, class_index: str | None) -> Inventory:
    files = hf_copy.split_files(src)
    hf_copy.require_splits(src, files, tuple(HF_SPLITS))
    used = [f for s in HF_SPLITS for f in files[s]]
    features = {f: hf_copy.check_columns(f, {"image": "image", "label": "label"}) for f in used}
    first = files["train"][0]
    names = features[first].get("label", {}).get("names")
    for file, feats in features.items():
        if feats.get("label", {}).get("names", names) != names:
            raise UserError(f"{file}: its ClassLabel differs from {first}'s; the splits must come from one copy")
    label_wnids = hf_wnids(names, first, class_index)
    wnids = sorted(set(label_wnids))
    index = {w: k for k, w in enumerate(wnids)}
    words = dict(zip(label_wnids, names, strict=True)) if names else dict(zip(*standard_classes(), strict=True))
    inventory = Inventory("imagenet", src, class_table(wnids, words), {}, {})
    rows = {}
    for file, labels, paths in run_parallel(
        _hf_rows, [(f, 1) for f in used], workers=workers, desc="listing the copy", unit="file"
    ):
        rows[file] = (labels, paths)
    for hf_split, split in HF_SPLITS.items():
        problems, items = Problems(skip_bad), []
        for file in files[hf_split]:
            base = stamp(file)
            labels, paths = rows[file]
            for row, (label, path) in enumerate(zip(labels, paths, strict=True)):
                source = TableRow(file, row, "image")
                if label is None or not 0 <= label < len(label_wnids):
                    problems.report(where(source), f"no label (label {label})", "use a split with labels")
                    continue
                wnid = label_wnids[label]
                name = path.rsplit("/", 1)[-1] if path else f"{Path(file).stem}-{row:07d}.JPEG"
                items.append(Item(f"{split}/{wnid}/{name}", source, (*base, row), label=index[wnid]))
        inventory.splits[split], inventory.problems[split] = items, problems
    return inventory


# ---- recognising the form -------------------------------------------------------------------------------


Scanner = Callable[[Path, bool, int, "str | None"], Inventory]


def recognise(src: Path) -> tuple[str, Scanner]:
    """The form at `src`, in words, and its lister; a UserError saying what is there when it is none."""
    if src.is_dir():
        if (src / "train").is_dir() and (src / "val").is_dir():
            return "an ImageFolder tree (train/, val/)", scan_folder
        if (src / "ILSVRC" / "Data" / "CLS-LOC").is_dir():
            return "Kaggle's layout (ILSVRC/Data/CLS-LOC, LOC_val_solution.csv)", scan_kaggle
        if (src / TRAIN_TAR).exists() or (src / VAL_TAR).exists():
            return f"the ILSVRC2012 tars ({TRAIN_TAR}, {VAL_TAR}, the devkit), read in place", scan_tars
        if hf_copy.is_copy(src):
            return f"a Hugging Face copy ({hf_copy.layout(src)}), read in place", scan_hf
        if (src / "state.json").is_file():
            raise UserError(
                f"{src}: one split of a Hugging Face save_to_disk copy; ImageNet needs train and "
                "validation: point --src at the folder of the whole DatasetDict (dataset_dict.json)"
            )
    raise UserError(f"{src}: found {found_at(src)}; nepa reads ImageNet as {ACCEPTED}")


def scan(src: Path, *, skip_bad: bool, workers: int, class_index: str | None = None) -> Inventory:
    form, scanner = recognise(src)
    print(f"{src}: {form}")
    return scanner(src, skip_bad, workers, class_index)
