"""One layout for measured results, written by the benchmarks (benchmarks/) and read by the cost model
(nepa/cost.py).

A result is one JSON file: a head naming what ran, where and with what, and its rows:

    {"schema": "nepa-measurement/1", "benchmark": "step_throughput", "date": "2026-12-06T01:00:00+00:00",
     "command": "python benchmarks/step_throughput.py ...",
     "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 8, "used": 1, ...},
     "versions": {"torch": "2.13.0", "deepspeed": "0.19.8", "cuda": "13.0", "nepa_git": "...", ...},
     "settings": {...the benchmark's own...},
     "results": [{...one row per measurement...}]}

beside a CSV of the rows (the same name, .csv). Readers select results by what the file says (its benchmark,
its device type), never by its name: any file name in the folder will do.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

SCHEMA = "nepa-measurement/1"
HEAD = ("benchmark", "date", "command", "device", "versions", "settings")  # every result names these


def write(result: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> Path:
    """{out}/{benchmark}_{device type}_{UTC stamp}.json (the head and rows) and .csv (the rows); the JSON path."""
    missing = [key for key in HEAD if key not in result]
    if missing or "type" not in result.get("device", {}):
        raise ValueError(f"a measurement names {', '.join(HEAD)} and device.type; missing {missing or ['type']}")
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = out / f"{result['benchmark']}_{result['device']['type']}_{stamp}.json"
    path.write_text(json.dumps({"schema": SCHEMA, **result, "results": rows}, indent=1) + "\n")
    fields = list(dict.fromkeys(k for row in rows for k in row if not isinstance(row[k], dict | list)))
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read(folder: Path, benchmark: str, device_type: str) -> list[dict[str, Any]]:
    """Every result of `benchmark` measured on `device_type` under `folder`, newest first; each with `path`."""
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            result = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(result, dict) or result.get("schema") != SCHEMA:
            continue  # another file, or one written before this layout
        if result.get("benchmark") == benchmark and result.get("device", {}).get("type") == device_type:
            found.append({**result, "path": str(path)})
    return sorted(found, key=lambda r: r.get("date", ""), reverse=True)
