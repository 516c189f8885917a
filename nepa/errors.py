"""User-facing failures: one clear line naming the file and the fix, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's inputs (a file, a parameter) that they can fix; the CLI prints it and exits 2."""


def require_file(path: str | Path, what: str, fix: str) -> Path:
    """The path if it is an existing file, else a UserError naming it, what it is, and how to get it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found; {fix}")
    return path
