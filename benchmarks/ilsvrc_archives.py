"""ImageNet-1K as distributed, written by the real libraries: for the tests' stand-ins and the prepare benchmark.

  ILSVRC2012_img_train.tar       one uncompressed tar per class, <wnid>.tar holding <wnid>_<n>.JPEG (tarfile)
  ILSVRC2012_img_val.tar         ILSVRC2012_val_<8 digits>.JPEG, flat (tarfile)
  ILSVRC2012_devkit_t12.tar.gz   ILSVRC2012_devkit_t12/data/meta.mat (scipy.io.savemat: the `synsets` struct
                                 array of the real file, leaf classes first with ILSVRC2012_IDs 1..N, then
                                 parent synsets with num_children > 0) and
                                 data/ILSVRC2012_validation_ground_truth.txt (one ILSVRC2012_ID per val image)
An ILSVRC2012_ID is not the class index: the ids here are a shuffled numbering, as the real ones are not in
sorted-synset order.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SYNSET_FIELDS = (
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_340_000_000
    tar.addfile(info, io.BytesIO(data))


def tar_of(files: Iterable[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            add_file(tar, name, data)
    return out.getvalue()


def meta_mat(ids: dict[str, int], words: dict[str, str], parents: int = 2) -> bytes:
    """The devkit's meta.mat: the leaf synsets (ILSVRC2012_ID, WNID, words, ...) and `parents` inner ones."""
    import scipy.io  # a test and benchmark dependency (envs/requirements-dev.txt); the runtime reads it too

    leaves = sorted(ids, key=ids.get)
    rows = [(ids[w], w, words[w], f"gloss of {w}", 0, np.zeros(0, np.uint16), 0, 1300) for w in leaves]
    top = max(ids.values())
    for k in range(parents):  # WordNet parents: the devkit lists them after the leaves, with children
        children = np.array([ids[w] for w in leaves[k::parents]], np.uint16)
        rows.append((top + 1 + k, f"n9{k:07d}", f"parent {k}", "a parent synset", len(children), children, 1, 0))
    synsets = np.zeros((len(rows), 1), dtype=[(f, "O") for f in SYNSET_FIELDS])
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": synsets})
    return out.getvalue()


def write_ilsvrc2012(
    folder: Path,
    train: dict[str, list[tuple[str, bytes]]],
    val: list[tuple[str, bytes]],
    ids: dict[str, int],
    words: dict[str, str],
) -> None:
    """The three archives in `folder`: train {wnid: [(file name, JPEG)]}, val [(wnid, JPEG)] in image order."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for wnid, files in train.items():
            add_file(tar, f"{wnid}.tar", tar_of(files))
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i, (_, data) in enumerate(val):
            add_file(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", data)
    truth = "".join(f"{ids[wnid]}\n" for wnid, _ in val).encode()
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        add_file(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat(ids, words))
        add_file(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
