"""Writing a file so that no reader, crash or full disk ever leaves half of it: every stage writes through here.

The content goes to a hidden sibling (`.NAME.tmp-PID`), which is fsynced and renamed over the target; a
write that fails (disk full, a bad input found midway, a signal) removes the sibling and leaves the old file
as it was. The file gets the permissions a plain open() would give it (0666 less the umask, 0644 typically,
readable by a lab's group on a shared cluster), whatever the writer used for its temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file, or a folder (which makes the renames inside it durable), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def named(error: OSError, path: str | Path) -> OSError:
    """`error` with the file it is about: writers that report ENOSPC without a name (Arrow, pandas, a buffered
    write's flush) get `path`, so that the CLI can say which file could not be written."""
    if error.filename is not None:
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path` through; it replaces `path` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise named(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def io_error_line(error: OSError) -> str:
    """One line for a failed read or write of a named file: the path, what happened, and what to do."""
    what = error.strerror or str(error)
    if error.errno in FULL:
        fix = "free space there (or point data.root / runs elsewhere) and re-run: work already finished is kept"
    elif error.errno in DENIED:
        fix = "make it writable for this user (or point data.root / runs elsewhere) and re-run"
    else:
        fix = "check the path and the file system, then re-run: work already finished is kept"
    return f"{error.filename}: {what}; {fix}"
