"""What a dataset's shards will hold, and where each image's bytes are read from, in place.

Every source form (nepa/data/imagenet_forms.py, nepa/data/ade20k_forms.py) lists itself as an Inventory: its
classes and, per split, Items. An Item's image (and mask) is one of:

  a path        a file of a folder tree
  TarMember     a member of an uncompressed tar, nested ones included (ILSVRC2012_img_train.tar holds one
                tar per class): `tarfile` reads the headers once, when the form is listed; the bytes are read
                at their offset in the outer file, where tar stores them verbatim
  ZipMember     a member of a zip (ADEChallengeData2016.zip), read and inflated by `zipfile`
  TableRow      a row of a Hugging Face copy: an Arrow IPC stream file (save_to_disk; memory-mapped) or a
                Parquet file (only the row groups holding the rows asked for are read)

The shard writer (nepa/data/shards.py) reads a shard's sources with `read_sources` in its worker process, so
archives and tables are read in parallel, member by member or row group by row group: nothing is extracted
and no per-image file is written.
"""

from __future__ import annotations

import bisect
import os
import tarfile
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from nepa.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
SKIP_HINT = "or re-run with --skip-bad to leave it out and record it in the manifest"
TAR_BLOCK = 512


class TarMember(NamedTuple):
    archive: str
    member: str  # its name; a nested member's names joined by ":" ("n01440764.tar:n01440764_10026.JPEG")
    offset: int  # of its data in `archive`
    size: int


class ZipMember(NamedTuple):
    archive: str
    member: str


class TableRow(NamedTuple):
    file: str  # .arrow (IPC stream) or .parquet
    row: int
    column: str  # a Hugging Face Image column: struct {bytes, path}


Source = str | TarMember | ZipMember | TableRow


def where(source: Source) -> str:
    """How messages name a source: a path, `archive:member`, or `file row N`."""
    if isinstance(source, str):
        return source
    if isinstance(source, TableRow):
        return f"{source.file} row {source.row} ({source.column})"
    return f"{source.archive}:{source.member}"


class Item(NamedTuple):
    """One row to be: the source image, its label (ImageNet) or its annotation (ADE20K)."""

    key: str  # split/... as in the folder tree: split/<wnid>/<file> (ImageNet), split/<file> (ADE20K)
    image: Source
    stamp: tuple[int, ...]  # what changes when the source does (size, mtime, offset...): part of the fingerprint
    label: int | None = None
    mask: Source | None = None


def by_key(item: Item) -> str:
    return item.key


class BadFile(Exception):
    """An unusable source, turned into a UserError or a skipped entry by Problems.report."""

    def __init__(self, path: str, reason: str, fix: str) -> None:
        super().__init__(path, reason, fix)
        self.path, self.reason, self.fix = path, reason, fix


@dataclass
class Problems:
    """Bad inputs: a UserError at the first, or with skip_bad a list for the manifest."""

    skip_bad: bool
    skipped: list[dict[str, str]] = field(default_factory=list)

    def report(self, path: str | Path, reason: str, fix: str) -> None:
        if not self.skip_bad:
            raise UserError(f"{path}: {reason}; {fix}, {SKIP_HINT}")
        self.skipped.append({"file": str(path), "reason": reason})


@dataclass
class Inventory:
    """What a dataset's shards will hold: its classes and the items of each split."""

    name: str
    source: Path
    classes: list[dict[str, object]]
    splits: dict[str, list[Item]]
    problems: dict[str, Problems]


def stamp(path: str | Path | os.DirEntry[str]) -> tuple[int, int]:
    """Size and modification time: a source file that changes makes its shards be written again."""
    st = path.stat() if not isinstance(path, str) else os.stat(path)
    return st.st_size, st.st_mtime_ns


def found_at(src: Path) -> str:
    """What is at --src, in a few words, for the message that says it is no form nepa reads."""
    if not src.exists():
        return "nothing (no such file or folder)"
    if src.is_file():
        return f"a file of {src.stat().st_size:,} bytes"
    entries = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(src))
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    return f"a folder holding {shown} ({len(entries)} entries)" if entries else "an empty folder"


# ---- listing archives and tables (when a form is listed) ---------------------------------------------------


def list_tar(archive: str, start: int = 0, length: int | None = None, prefix: str = "") -> tuple[list, str | None]:
    """The regular files of the tar at bytes [start, start + length) of `archive` (default: all of it), as
    TarMembers named `prefix` + name, and what is wrong if the tar is cut short (None when it is whole).

    Only headers are read (tarfile seeks over the data). Whole means: every member's data lies inside, and the
    end-of-archive block follows the last one; a tar nested in another is read within its own bytes, so a
    cut inner tar is found, not read into its neighbour.
    """
    end = os.path.getsize(archive) if length is None else start + length
    members: list[TarMember] = []
    tail = start  # where the end-of-archive block must be
    with open(archive, "rb") as f:
        f.seek(start)
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    data_end = info.offset_data + info.size
                    if info.offset >= end or data_end > end:
                        return members, f"truncated: {info.name} ends past the archive's {end - start:,} bytes"
                    tail = info.offset_data + -(-info.size // TAR_BLOCK) * TAR_BLOCK
                    if info.isreg() and not info.issparse():
                        members.append(TarMember(archive, prefix + info.name, info.offset_data, info.size))
        except tarfile.ReadError as e:
            return members, f"not a readable tar ({e})"
        if tail + TAR_BLOCK > end or os.pread(f.fileno(), TAR_BLOCK, tail) != bytes(TAR_BLOCK):
            return members, f"truncated: no end-of-archive block after its last member ({len(members)} files read)"
    return members, None


def compressed(path: str | Path) -> str | None:
    """'gzip', 'bzip2' or 'xz' if the file starts with that compressor's magic bytes."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz")):
        if head.startswith(magic):
            return name
    return None


def arrow_table(file: str, columns: Sequence[str] | None = None) -> pa.Table:
    """An Arrow IPC file (stream or file format, as save_to_disk writes it), memory-mapped: only the pages
    of the columns used are read."""
    source = pa.memory_map(file)
    try:
        table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        table = pa.ipc.open_file(source).read_all()
    return table.select(list(columns)) if columns is not None else table


def table_schema(file: str) -> pa.Schema:
    if file.endswith(".parquet"):
        return pq.read_schema(file)
    source = pa.memory_map(file)
    try:
        return pa.ipc.open_stream(source).schema
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source).schema


# ---- reading the bytes (in the shard writer's worker processes) ---------------------------------------------


def _read_files(sources: list[str]) -> list[bytes | BadFile]:
    out: list[bytes | BadFile] = []
    for path in sources:
        try:
            out.append(Path(path).read_bytes())
        except OSError as e:
            out.append(BadFile(path, f"cannot be read ({e.strerror})", "restore it or make it readable"))
    return out


def _read_tar(archive: str, sources: list[TarMember]) -> list[bytes | BadFile]:
    with open(archive, "rb") as f:
        datas = [os.pread(f.fileno(), s.size, s.offset) for s in sources]
    return [
        d if len(d) == s.size else BadFile(where(s), "truncated: the archive ends inside it", "restore the archive")
        for s, d in zip(sources, datas, strict=True)
    ]


def _read_zip(archive: str, sources: list[ZipMember]) -> list[bytes | BadFile]:
    out: list[bytes | BadFile] = []
    try:
        with zipfile.ZipFile(archive) as z:
            for s in sources:
                try:
                    out.append(z.read(s.member))
                except (zipfile.BadZipFile, KeyError, zlib.error, EOFError, OSError) as e:
                    out.append(BadFile(where(s), f"not readable from the zip ({e})", "restore the zip"))
    except (zipfile.BadZipFile, OSError) as e:
        return [BadFile(archive, f"not a readable zip ({e})", "restore it")] * len(sources)
    return out


def _read_table(file: str, column: str, sources: list[TableRow]) -> list[bytes | BadFile]:
    rows = [s.row for s in sources]
    if file.endswith(".parquet"):
        meta = pq.ParquetFile(file).metadata
        starts = [0]
        for g in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(g).num_rows)
        group_of = [bisect.bisect_right(starts, r) - 1 for r in rows]
        groups = sorted(set(group_of))
        cells = pq.ParquetFile(file).read_row_groups(groups, columns=[column]).column(column)
        base, read = {}, 0
        for g in groups:  # where each group's rows begin in what was read
            base[g], read = read, read + starts[g + 1] - starts[g]
        local = [base[g] + r - starts[g] for r, g in zip(rows, group_of, strict=True)]
    else:
        cells, local = arrow_table(file, [column]).column(column), rows
    out: list[bytes | BadFile] = []
    for s, i in zip(sources, local, strict=True):
        cell = cells[i].as_py()
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data is None:
            fix = "save the copy with its images embedded (save_to_disk and push_to_hub do)"
            out.append(BadFile(where(s), f"no {s.column} bytes in this row", fix))
        else:
            out.append(data)
    return out


def read_sources(sources: Sequence[Source]) -> list[bytes | BadFile]:
    """The bytes of each source, in order, or the BadFile that says why not; each archive or table is opened
    once for all its members."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        kind = (
            ("file",)
            if isinstance(s, str)
            else (("table", s.file, s.column) if isinstance(s, TableRow) else (type(s).__name__, s.archive))
        )
        groups[kind].append(i)
    out: list[bytes | BadFile] = [b""] * len(sources)
    for kind, indices in groups.items():
        picked = [sources[i] for i in indices]
        if kind[0] == "file":
            datas = _read_files(picked)
        elif kind[0] == "table":
            datas = _read_table(kind[1], kind[2], picked)
        elif kind[0] == "TarMember":
            datas = _read_tar(kind[1], picked)
        else:
            datas = _read_zip(kind[1], picked)
        for i, data in zip(indices, datas, strict=True):
            out[i] = data
    return out
