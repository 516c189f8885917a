"""`nepa prepare imagenet|ade20k --src X` for every form labs hold, on stand-ins written by the real libraries
(tests/data_standins.py): the ILSVRC2012 tars and devkit, Kaggle's layout, Hugging Face copies (save_to_disk and
Parquet), the ADE20K folder and zip, scene_parse_150.

The ImageNet stand-in has all 1,000 real synset ids (timm's list) with shuffled ILSVRC2012_IDs, so that its labels
can be compared, image by image, with torchvision.datasets.ImageNet's parse of the same tars and with the Hugging
Face ClassLabel read back by `datasets`: the standard index is only testable on the whole class set.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_standins import (
    ImageNetStandin,
    ade_scenes,
    hf_dataset_dict,
    hf_names,
    imagenet_standin,
    jpeg,
    scene_parse_150,
    write_ade_folder,
    write_ade_zip,
    write_hf,
    write_kaggle,
    write_tars,
)

from nepa.cli import main as nepa_main
from nepa.data.imagenet_forms import hf_wnids, standard_classes
from nepa.data.sources import list_tar
from nepa.errors import UserError

datasets = pytest.importorskip("datasets", reason="`datasets` (envs/requirements-dev.txt) writes the HF stand-ins")
TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
PER_SHARD = 700


def prepare(root: Path, dataset: str, src: Path, *args: str) -> tuple[int, str, str]:
    """`nepa prepare DATASET --src SRC` into root/data: exit status, stdout, the last line of stderr."""
    params = root / "params.yaml"
    if not params.exists():
        root.mkdir(parents=True, exist_ok=True)
        params.write_text("seed: 0\n")
    sets = [f"data.root={root / 'data'}", f"data.images_per_shard={PER_SHARD}", "data.workers=2", *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = nepa_main(
            ["prepare", dataset, "--src", str(src), "--params", str(params), *[x for s in sets for x in ("--set", s)]]
        )
    lines = err.getvalue().strip().splitlines()
    return code, out.getvalue(), lines[-1] if lines else ""


def shard_rows(root: Path, dataset: str) -> dict[str, list[dict]]:
    """Every split's rows, shard by shard, as the manifest lists them."""
    folder = root / "data/shards" / dataset
    manifest = json.loads((folder / "manifest.json").read_text())
    return {
        split: [row for s in v["shards"] for row in pq.read_table(folder / s["file"]).to_pylist()]
        for split, v in manifest["splits"].items()
    }


def manifest(root: Path, dataset: str) -> dict:
    return json.loads((root / "data/shards" / dataset / "manifest.json").read_text())


def shard_bytes(root: Path, dataset: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted((root / "data/shards" / dataset).rglob("*.parquet"))}


# ---- ImageNet: every form, all 1,000 classes ------------------------------------------------------------


@dataclass
class Prepared:
    standin: ImageNetStandin
    forms: dict[str, Path]
    torchvision: dict[bytes, int]  # image bytes -> torchvision.datasets.ImageNet's label
    said: dict[str, str]  # what each prepare printed


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    wnids, words = standard_classes()
    s = imagenet_standin(list(wnids), dict(zip(wnids, words, strict=True)))
    top = tmp_path_factory.mktemp("imagenet")
    dataset_dict = hf_dataset_dict(s, hf_names())
    forms = {
        "tars": write_tars(s, top / "tars"),
        "kaggle": write_kaggle(s, top / "kaggle"),
        "hf_disk": write_hf(dataset_dict, top / "hf_disk", parquet=False),
        "hf_parquet": write_hf(dataset_dict, top / "hf_parquet", parquet=True),
    }
    # torchvision's parse of the same tars is the reference; its extraction is the ImageFolder tree (val sorted)
    from torchvision.datasets import imagenet as tv_imagenet

    tree = top / "tree"
    tree.mkdir()
    for name in TARS:
        (tree / name).symlink_to(forms["tars"] / name)
    reference = {}
    with pytest.MonkeyPatch.context() as mp:
        # stub: torchvision checks the archives' md5 against the real 150 GB files', which a stand-in cannot match
        mp.setattr(tv_imagenet, "_verify_archive", lambda *_: None)
        for split in ("train", "val"):
            for path, label in tv_imagenet.ImageNet(str(tree), split).samples:
                reference[Path(path).read_bytes()] = label
    for name in TARS:
        (tree / name).unlink()
    forms["tree"] = tree
    said = {}
    for form, src in forms.items():
        code, out, err = prepare(top / f"out-{form}", "imagenet", src)
        assert code == 0, err
        said[form] = out
    return Prepared(s, forms, reference, said)


def test_every_imagenet_form_labels_each_image_as_torchvision_and_hf(imagenet: Prepared) -> None:
    top = imagenet.forms["tars"].parent
    hf = datasets.load_from_disk(str(imagenet.forms["hf_disk"]))
    hf_labels = {
        row["image"]["bytes"]: row["label"]
        for split in ("train", "validation")
        for row in hf[split].cast_column("image", datasets.Image(decode=False))
    }
    assert hf_labels == imagenet.torchvision  # the stand-in's claim: ClassLabel numbers are the standard index
    rows = {form: shard_rows(top / f"out-{form}", "imagenet") for form in imagenet.forms}
    for form, splits in rows.items():
        labels = {r["image"]: r["label"] for split in splits.values() for r in split}
        assert labels == imagenet.torchvision, form
        assert sum(map(len, splits.values())) == len(imagenet.torchvision) == 1006 + 1000
        for split, split_rows in splits.items():  # the key names the class the label indexes
            assert all(r["key"].split("/")[1] == standard_classes()[0][r["label"]] for r in split_rows), (form, split)
    # the tars and Kaggle's layout give the very rows of the extracted tree, in the same order
    assert rows["tars"] == rows["tree"] == rows["kaggle"]
    for form in ("hf_disk", "hf_parquet"):  # a Hugging Face copy keeps its own row order
        for split in ("train", "val"):
            assert sorted(rows[form][split], key=lambda r: r["key"]) == rows["tree"][split]
    # class names from each source
    names = {form: [c["name"] for c in manifest(top / f"out-{form}", "imagenet")["classes"]] for form in imagenet.forms}
    wnids, words = standard_classes()
    for form in imagenet.forms:
        assert [c["id"] for c in manifest(top / f"out-{form}", "imagenet")["classes"]] == list(wnids)
    assert names["tars"] == names["kaggle"] == list(words)  # devkit words, LOC_synset_mapping.txt
    assert names["hf_disk"] == names["hf_parquet"] == hf_names()  # ClassLabel names, 'crane2' and all
    assert names["tree"] == list(wnids)  # nothing beside the folders names them
    assert "the ILSVRC2012 tars" in imagenet.said["tars"] and "Kaggle's layout" in imagenet.said["kaggle"]
    assert "save_to_disk" in imagenet.said["hf_disk"] and "Parquet files" in imagenet.said["hf_parquet"]
    assert "an ImageFolder tree" in imagenet.said["tree"]


def test_tars_are_read_in_place_and_rerun_keeps_every_shard(imagenet: Prepared) -> None:
    out = imagenet.forms["tars"].parent / "out-tars"
    assert sorted(p.name for p in imagenet.forms["tars"].iterdir()) == sorted(TARS)  # nothing extracted beside
    files = [p for p in (out / "data").rglob("*") if p.is_file()]
    assert len(files) == 1 + 2 + 2  # manifest, 2 train shards, 2 val shards: no per-image file anywhere
    code, said, _ = prepare(out, "imagenet", imagenet.forms["tars"])
    assert code == 0 and "wrote 0 shards, kept 4" in said


def test_hf_classlabel_order_is_the_standard_index() -> None:
    """The hub's ClassLabel, as `datasets` builds it, numbers the classes in sorted-synset order."""
    label = datasets.ClassLabel(names=hf_names())
    wnids = standard_classes()[0]
    assert list(wnids) == sorted(wnids) and label.num_classes == 1000
    assert label.str2int("tench, Tinca tinca") == 0 and label.str2int("crane2") == wnids.index("n03126707")
    assert hf_wnids(label.names, "copy", None) == list(wnids)
    moved = list(label.names)
    moved[3], moved[4] = moved[4], moved[3]  # two classes swapped: not renamed, moved
    with pytest.raises(UserError, match=r"not ImageNet-1K's in the standard order \(name 3 is 'hammerhead"):
        hf_wnids(moved, "copy", None)


def _export_folders(imagenet: Prepared, folder: Path, by: str) -> None:
    """The obvious export of the Hugging Face copy: one folder per label number, or per class name."""
    hf = datasets.load_from_disk(str(imagenet.forms["hf_disk"]))
    names = hf["train"].features["label"].names
    for hf_split, split in (("train", "train"), ("validation", "val")):
        for row in hf[hf_split].cast_column("image", datasets.Image(decode=False)):
            label = str(row["label"]) if by == "number" else names[row["label"]]
            (folder / split / label).mkdir(parents=True, exist_ok=True)
            (folder / split / label / row["image"]["path"]).write_bytes(row["image"]["bytes"])


@pytest.mark.parametrize("by", ["number", "name"])
def test_folders_that_are_not_synset_ids_are_refused_then_mapped(imagenet: Prepared, tmp_path: Path, by: str) -> None:
    export = tmp_path / "export"
    _export_folders(imagenet, export, by)
    code, _, err = prepare(tmp_path, "imagenet", export)
    assert code == 2 and err.startswith(f"nepa prepare: error: {export / 'train'}: 1000 of 1000 class folders are not ")
    assert "data.class_index: standard" in err and not (tmp_path / "data/shards").exists()
    if by == "number":
        mapping = "standard"
    else:  # a JSON file: name -> synset id (what a user writes from the hub's classes.py)
        mapping = str(tmp_path / "classes.json")
        Path(mapping).write_text(json.dumps(dict(zip(hf_names(), standard_classes()[0], strict=True))))
    code, _, err = prepare(tmp_path, "imagenet", export, f"data.class_index={mapping}")
    assert code == 0, err
    labels = {r["image"]: r["label"] for split in shard_rows(tmp_path, "imagenet").values() for r in split}
    assert labels == imagenet.torchvision


# ---- ImageNet: bad inputs (a few synsets): one line naming the file and the fix, exit 2, shards intact ------


SMALL = ["n01440764", "n01443537", "n01484850", "n02012849"]


@pytest.fixture
def small(tmp_path: Path) -> ImageNetStandin:
    return imagenet_standin(SMALL, {w: f"class {w}" for w in SMALL}, extra=1)


def _fails_and_keeps(root: Path, src: Path, starts: str, *also: str) -> str:
    before = shard_bytes(root, "imagenet")
    code, _, err = prepare(root, "imagenet", src)
    assert code == 2 and err.startswith(f"nepa prepare: error: {starts}"), err
    assert all(a in err for a in also), err
    assert shard_bytes(root, "imagenet") == before and before
    return err


def test_truncated_inner_tar(small: ImageNetStandin, tmp_path: Path) -> None:
    tars = write_tars(small, tmp_path / "tars")
    assert prepare(tmp_path, "imagenet", tars)[0] == 0
    train = tars / TARS[0]
    with tarfile.open(train) as tar:
        inner = {m.name: tar.extractfile(m).read() for m in tar}
    cut = inner["n01443537.tar"][:2100]  # inside its second image
    with tarfile.open(train, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in inner.items():
            info = tarfile.TarInfo(name)
            data = cut if name == "n01443537.tar" else data
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _fails_and_keeps(tmp_path, tars, f"{train}:n01443537.tar: truncated", "download ILSVRC2012_img_train.tar again")
    code, _, _ = prepare(tmp_path, "imagenet", tars, "data.skip_bad=true")
    assert code == 0
    skipped = manifest(tmp_path, "imagenet")["splits"]["train"]["skipped"]
    assert [s["file"] for s in skipped] == [f"{train}:n01443537.tar"]
    assert manifest(tmp_path, "imagenet")["splits"]["train"]["rows"] == 5 + 1  # its first image kept


def test_cut_tars_are_found_at_listing(tmp_path: Path) -> None:
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        for k in range(3):
            info = tarfile.TarInfo(f"{k}.JPEG")
            info.size = 700
            tar.addfile(info, io.BytesIO(jpeg(k)[:1] * 700))
    members, problem = list_tar(str(whole))
    assert problem is None and [m.member for m in members] == ["0.JPEG", "1.JPEG", "2.JPEG"]
    data = whole.read_bytes()
    for cut, says in ((1536, "no end-of-archive block"), (2300, "ends past the archive")):
        (tmp_path / "cut.tar").write_bytes(data[:cut])  # 1536: right after the first member; 2300: in the second
        members, problem = list_tar(str(tmp_path / "cut.tar"))
        assert problem is not None and says in problem and len(members) <= 2


def test_missing_devkit(small: ImageNetStandin, tmp_path: Path) -> None:
    tars = write_tars(small, tmp_path / "tars")
    assert prepare(tmp_path, "imagenet", tars)[0] == 0
    (tars / TARS[2]).unlink()
    _fails_and_keeps(tmp_path, tars, f"{tars / TARS[2]}: not found; the labels come from the devkit", "beside")


def test_validation_image_without_ground_truth(small: ImageNetStandin, tmp_path: Path) -> None:
    tars = write_tars(small, tmp_path / "tars")
    assert prepare(tmp_path, "imagenet", tars)[0] == 0
    short = ImageNetStandin(small.wnids, small.words, small.ids, small.train, small.val[:-1])
    write_tars(short, tmp_path / "short")  # its devkit's ground truth lacks the last val image
    shutil.copy(tmp_path / "short" / TARS[2], tars / TARS[2])
    last = f"ILSVRC2012_val_{len(small.val):08d}.JPEG"
    _fails_and_keeps(tmp_path, tars, f"{tars / TARS[1]}:{last}: no ground truth", "lists 3 images", "--skip-bad")


def test_hf_copy_without_label_column(small: ImageNetStandin, tmp_path: Path) -> None:
    tars = write_tars(small, tmp_path / "tars")
    assert prepare(tmp_path, "imagenet", tars)[0] == 0
    dd = datasets.DatasetDict({s: d.remove_columns("label") for s, d in hf_dataset_dict(small, small.wnids).items()})
    copy = write_hf(dd, tmp_path / "copy", parquet=False, files_per_split=1)
    arrow = copy / "train" / "data-00000-of-00001.arrow"
    _fails_and_keeps(tmp_path, copy, f"{arrow}: no label column (its columns: image)", "point --src at one")


def test_parquet_of_another_schema(small: ImageNetStandin, tmp_path: Path) -> None:
    tars = write_tars(small, tmp_path / "tars")
    assert prepare(tmp_path, "imagenet", tars)[0] == 0
    other = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict({"text": ["a", "b"], "score": [1.0, 2.0]}) for s in ("train", "validation")}
    )
    copy = write_hf(other, tmp_path / "copy", parquet=True, files_per_split=1)
    first = copy / "data" / "train-00000-of-00001.parquet"
    _fails_and_keeps(tmp_path, copy, f"{first}: no image column (its columns: text, score)", "image (an Image")


def test_hf_names_that_are_synset_ids_are_remapped(small: ImageNetStandin, tmp_path: Path) -> None:
    """A ClassLabel whose names are synset ids in another order: its numbers are mapped to the sorted order."""
    shuffled = [small.wnids[k] for k in (2, 0, 3, 1)]
    dd = hf_dataset_dict(small, small.wnids)
    relabel = {k: shuffled.index(w) for k, w in enumerate(small.wnids)}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=shuffled)})
    dd = datasets.DatasetDict(
        {s: d.map(lambda r: {"label": relabel.get(r["label"], -1)}, features=features) for s, d in dd.items()}
    )
    copy = write_hf(dd, tmp_path / "copy", parquet=True, files_per_split=1)
    assert prepare(tmp_path, "imagenet", copy)[0] == 0
    for split in shard_rows(tmp_path, "imagenet").values():
        assert all(small.wnids[r["label"]] == r["key"].split("/")[1] for r in split) and split
    assert [c["id"] for c in manifest(tmp_path, "imagenet")["classes"]] == small.wnids


# ---- ADE20K -------------------------------------------------------------------------------------------------


def test_every_ade20k_form_gives_the_same_rows(tmp_path: Path) -> None:
    scenes = ade_scenes()
    forms = {
        "folder": write_ade_folder(scenes, tmp_path / "ADEChallengeData2016"),
        "zip": write_ade_zip(scenes, tmp_path / "zip" / "ADEChallengeData2016.zip"),
        "zip_folder": tmp_path / "zip",  # the folder holding the zip
        "hf_disk": write_hf(scene_parse_150(scenes), tmp_path / "hf_disk", parquet=False),
        "hf_parquet": write_hf(scene_parse_150(scenes), tmp_path / "hf_parquet", parquet=True),
    }
    rows = {}
    for form, src in forms.items():
        code, _, err = prepare(tmp_path / f"out-{form}", "ade20k", src)
        assert code == 0, (form, err)
        rows[form] = shard_rows(tmp_path / f"out-{form}", "ade20k")
    expected = {split: [(f"{split}/{stem}.jpg", image, mask) for stem, image, mask in v] for split, v in scenes.items()}
    for form, splits in rows.items():
        assert {s: [(r["key"], r["image"], r["mask"]) for r in v] for s, v in splits.items()} == expected, form
    classes = manifest(tmp_path / "out-zip", "ade20k")["classes"]
    assert [c["name"] for c in classes] == ["wall", "building, edifice", "sky"]
    assert manifest(tmp_path / "out-folder", "ade20k")["classes"] == classes
    assert len(manifest(tmp_path / "out-hf_disk", "ade20k")["classes"]) == 150  # no class table in the HF copy


def test_zip_with_a_missing_annotation(tmp_path: Path) -> None:
    scenes = ade_scenes()
    path = write_ade_zip(scenes, tmp_path / "ADEChallengeData2016.zip")
    assert prepare(tmp_path, "ade20k", path)[0] == 0
    before = shard_bytes(tmp_path, "ade20k")
    gone = "ADEChallengeData2016/annotations/validation/ADE_val_00000002.png"
    write_ade_zip(scenes, path, drop=gone)
    code, _, err = prepare(tmp_path, "ade20k", path)
    assert code == 2 and err.startswith(f"nepa prepare: error: {path}:{gone}: missing annotation of ADE_val_00000002")
    assert "download ADEChallengeData2016.zip again" in err and shard_bytes(tmp_path, "ade20k") == before
    assert prepare(tmp_path, "ade20k", path, "data.skip_bad=true")[0] == 0
    assert manifest(tmp_path, "ade20k")["splits"]["validation"]["rows"] == 1


def test_prepare_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """benchmarks/data_forms.py end to end, tiny (no timing asserted: targets live in benchmarks/)."""
    pytest.importorskip("skimage", reason="scikit-image (envs/requirements-dev.txt) makes the benchmark's photographs")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "data_forms.py"
    args = [
        "--images",
        "24",
        "--val",
        "6",
        "--classes",
        "3",
        "--workers",
        "1",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "data_forms.json").read_text())
    assert [(r["form"], r["workers"]) for r in result["rows"]] == [("tars", 1), ("tree", 1)]
    tars, tree = result["rows"]
    assert tars["source_files_per_1000"] == 1000 * 3 / 30 and tree["source_files_per_1000"] == 1000
    assert all(r["images_per_cpu_s"] > 0 and r["peak_extra_mb"] > 0 for r in result["rows"])
    assert "| tars | 1 |" in (tmp_path / "data_forms.md").read_text()
