"""The report as sections (a paragraph, a table, figures), written as Markdown and as one self-contained HTML file.

The HTML inlines its CSS and its PNGs (base64) and forbids every external load with a Content-Security-Policy,
so it opens the same from a laptop, an archive or a CI artifact.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

MARKS = {"reduced": "⚠ ", "notrun": ""}  # Markdown has no row styles: reduced-scale rows start with a sign
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #1d1d1f; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 12.5px; }
th, td { border: 1px solid #c8c8c8; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef1f6; }
tr.reduced td { background: #fff4d6; } tr.notrun td { color: #888; font-style: italic; }
figure { margin: 12px 0 24px; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 12.5px; } p.meta { color: #555; margin-top: 0; }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass
class Section:
    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    row_classes: list[str] | None = None  # per table row: "", "reduced" (direction only) or "notrun"
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (PNG, caption)


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(title: str, meta: str, sections: list[Section], folder: Path) -> str:
    """The report as Markdown; figure links are relative to `folder`, where the .md file goes."""
    out = [f"# {title}", "", meta, ""]
    for s in sections:
        out += [f"## {s.title}", ""] + ([s.text, ""] if s.text else [])
        if s.table is not None:
            classes = s.row_classes or [""] * len(s.table)
            out.append("| " + " | ".join(map(_md_cell, s.table.columns)) + " |")
            out.append("|" + "---|" * len(s.table.columns))
            for cls, row in zip(classes, s.table.itertuples(index=False), strict=True):
                cells = [MARKS.get(cls, "") + _md_cell(row[0]), *map(_md_cell, row[1:])]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        for png, caption in s.figures:
            out += [f"![{caption}]({os.path.relpath(png, folder)})", "", f"*{caption}*", ""]
    return "\n".join(out)


def _html_table(table: pd.DataFrame, classes: list[str] | None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for cls, row in zip(classes or [""] * len(table), table.itertuples(index=False), strict=True):
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_figure(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    text = html.escape(caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def to_html(title: str, meta: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p>',
    ]
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        if s.table is not None:
            parts.append(_html_table(s.table, s.row_classes))
        parts += [_html_figure(png, caption) for png, caption in s.figures]
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
