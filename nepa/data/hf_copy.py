"""A Hugging Face `datasets` copy, read with pyarrow alone (`datasets` is not needed to read it).

Two layouts:
  save_to_disk   dataset_dict.json {"splits": [...]}; per split a folder with state.json (its data files, in
                 order), dataset_info.json (the features) and data-NNNNN-of-NNNNN.arrow (Arrow IPC streams)
  Parquet        the hub's files: data/<split>-NNNNN-of-NNNNN.parquet, or <config>/<split>/NNNN.parquet;
                 the features are in each file's schema metadata ("huggingface")
An Image column is a struct {bytes, path}; a ClassLabel column holds integers, its names in the features.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nepa.data.sources import arrow_table, table_schema
from nepa.errors import UserError, require_file

SPLITS = ("train", "validation", "test")


def is_copy(src: Path) -> bool:
    return src.is_dir() and ((src / "dataset_dict.json").is_file() or next(src.rglob("*.parquet"), None) is not None)


def layout(src: Path) -> str:
    return "save_to_disk Arrow files" if (src / "dataset_dict.json").is_file() else "Parquet files"


def split_files(src: Path) -> dict[str, list[str]]:
    """Split name -> its data files, in order."""
    if (src / "dataset_dict.json").is_file():
        out = {}
        for split in json.loads((src / "dataset_dict.json").read_text()).get("splits", []):
            state = require_file(src / split / "state.json", "save_to_disk split state", "save the copy again")
            out[split] = [str(src / split / f["filename"]) for f in json.loads(state.read_text())["_data_files"]]
        return out
    out: dict[str, list[str]] = {}
    for path in sorted(src.rglob("*.parquet")):
        prefix = path.name.split("-", 1)[0]
        out.setdefault(prefix if prefix in SPLITS else path.parent.name, []).append(str(path))
    return out


def require_splits(src: Path, files: dict[str, list[str]], needed: tuple[str, ...]) -> None:
    missing = [s for s in needed if not files.get(s)]
    if missing:
        raise UserError(
            f"{src}: no {missing[0]} split in this Hugging Face copy (it has {', '.join(files) or 'none'}); save the "
            f"whole DatasetDict ({', '.join(needed)}) with save_to_disk, or keep every Parquet file"
        )


def features(file: str) -> dict:
    """The features stored with a data file: its schema metadata, else dataset_info.json beside it."""
    meta = table_schema(file).metadata or {}
    if b"huggingface" in meta:
        return json.loads(meta[b"huggingface"]).get("info", {}).get("features", {})
    info = Path(file).parent / "dataset_info.json"
    return json.loads(info.read_text()).get("features", {}) if info.is_file() else {}


def _fits(typ: pa.DataType | None, kind: str) -> bool:
    if typ is None:
        return False
    if kind == "label":
        return pa.types.is_integer(typ)
    return pa.types.is_struct(typ) and {typ.field(i).name for i in range(typ.num_fields)} >= {"bytes", "path"}


def check_columns(file: str, columns: dict[str, str]) -> dict:
    """The file's features, once it holds the columns named (column -> 'image' | 'label'); else one line."""
    try:
        schema = table_schema(file)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{file}: not a readable Arrow or Parquet file ({e}); restore the copy") from None
    have = {f.name: f.type for f in schema}
    for column, kind in columns.items():
        if not _fits(have.get(column), kind):
            wanted = ", ".join(
                f"{c} ({'an Image: bytes and path' if k == 'image' else 'a ClassLabel'})" for c, k in columns.items()
            )
            what = "no" if column not in have else f"a {have[column]} as its"
            raise UserError(
                f"{file}: {what} {column} column (its columns: {', '.join(have) or 'none'}); a Hugging Face copy "
                f"of this dataset has {wanted}: point --src at one"
            )
    return features(file)


def column_values(file: str, column: str, field: str | None = None) -> list:
    """One column (or one field of a struct column: an image's path) of a data file, reading nothing else."""
    if file.endswith(".parquet"):
        name = f"{column}.{field}" if field else column
        return pq.read_table(file, columns=[name]).column(0).to_pylist()
    values = arrow_table(file, [column]).column(column)
    return (pc.struct_field(values, field) if field else values).to_pylist()
