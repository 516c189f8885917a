"""docs/paper.md's tables, as the tests read them (tests/test_presets.py, tests/test_plan.py)."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "paper.md"


def doc_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Each markdown table of the page, by the heading above it: a list of {header: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                found.setdefault(heading, []).append(dict(zip(header, cells, strict=True)))
        else:
            header = None
    return found


TABLES = doc_tables(DOC.read_text())


def table(prefix: str) -> list[dict[str, str]]:
    matches = [rows for heading, rows in TABLES.items() if heading.startswith(prefix)]
    assert len(matches) == 1, f"docs/paper.md: one table under a heading starting {prefix!r}"
    return matches[0]
