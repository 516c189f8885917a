"""The resolved params of every scale x recipe x size x variant, against a committed snapshot.

Refactors of how params are layered (nepa/config.py, nepa/presets.py) must not change what any run trains with.
Where a change is meant to move a value, regenerate the snapshot in its own commit and say which values moved:

    python tests/test_resolved_params.py     # rewrites tests/snapshots/resolved_params.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from nepa.config import SIZES, load_params
from nepa.errors import UserError
from nepa.variants import VARIANTS

SNAPSHOT = Path(__file__).parent / "snapshots" / "resolved_params.json"
SCALES = ("embedded", "full")
RECIPES = ("paper", "official")
# Launchers: the local default, and SLURM with the preset's shapes (where the batch checks count tasks).
LAUNCHERS = {"local": {}, "submitit": {"launcher": {"kind": "submitit"}}}


def combinations() -> list[tuple[str, str, str, str, str]]:
    return [
        (scale, recipe, size, variant, launcher)
        for scale in SCALES
        for recipe in RECIPES
        for size in SIZES
        for variant in VARIANTS
        for launcher in LAUNCHERS
    ]


def resolve(folder: Path, scale: str, recipe: str, size: str, variant: str, launcher: str) -> dict | str:
    """One combination's resolved params as JSON data, or the one-line refusal (e.g. tiny at full scale)."""
    params = {"scale": scale, "recipe": recipe, "data": {"imagenet_src": "/datasets/imagenet"}, **LAUNCHERS[launcher]}
    path = folder / f"{scale}-{recipe}-{launcher}.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(params))
    try:
        return load_params(path, (f"variant={variant}",), size=size).model_dump(mode="json")
    except UserError as e:
        return f"refused: {str(e).replace(str(path), 'params.yaml')}"


ABSENT = "<absent>"


def snapshot(folder: Path) -> dict[str, dict | str]:
    """Every combination's flattened params; a variant's as its difference from `nepa` of the same combination
    (keeps the file small and its diffs readable)."""
    flat = {combo: resolve(folder, *combo) for combo in combinations()}
    flat = {combo: _flat(value) if isinstance(value, dict) else value for combo, value in flat.items()}
    out: dict[str, dict | str] = {}
    for (scale, recipe, size, variant, launcher), value in flat.items():
        base = flat[scale, recipe, size, "nepa", launcher]
        if variant != "nepa" and isinstance(value, dict) and isinstance(base, dict):
            value = {
                k: value.get(k, ABSENT)
                for k in sorted(value.keys() | base.keys())
                if value.get(k, ABSENT) != base.get(k, ABSENT)
            }
        out["/".join((scale, recipe, size, variant, launcher))] = value
    return out


def test_every_preset_and_variant_resolves_as_recorded(tmp_path: Path) -> None:
    recorded = json.loads(SNAPSHOT.read_text())
    now = snapshot(tmp_path)
    assert now.keys() == recorded.keys()
    changed = [key for key in recorded if now[key] != recorded[key]]
    if changed:
        first = changed[0]
        was, is_ = recorded[first], now[first]
        if isinstance(was, dict) and isinstance(is_, dict):
            diff = {k: (was.get(k), is_.get(k)) for k in sorted(was.keys() | is_.keys()) if was.get(k) != is_.get(k)}
        else:
            diff = {"value": (was, is_)}
        pytest.fail(f"{len(changed)} combinations resolve differently; first {first}: {diff}")


def _flat(data: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        SNAPSHOT.write_text(json.dumps(snapshot(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
