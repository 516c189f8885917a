"""Seeding, and the random-number-generator states of python, numpy and torch as safetensors + strings.

The model draws from torch's global generator (RoPE coordinate rescale, masks, drop path); restoring
every generator at a step boundary makes a resumed run draw what the uninterrupted one drew. States
are stored without pickle: integer arrays as tensors, the few scalars as header strings.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A seed for a stream identified by several integers (e.g. seed, rank, step), independent of the others."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def capture() -> tuple[dict[str, Tensor], dict[str, str]]:
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    meta = {
        "python_version": str(version),
        "python_gauss": repr(gauss),
        "numpy_kind": kind,
        "numpy_pos": str(pos),
        "numpy_has_gauss": str(has_gauss),
        "numpy_cached": repr(cached),
    }
    return tensors, meta


def restore(tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    gauss = None if meta["python_gauss"] == "None" else float(meta["python_gauss"])
    random.setstate((int(meta["python_version"]), tuple(tensors["python"].tolist()), gauss))
    np.random.set_state(
        (
            meta["numpy_kind"],
            tensors["numpy"].numpy().astype(np.uint32),
            int(meta["numpy_pos"]),
            int(meta["numpy_has_gauss"]),
            float(meta["numpy_cached"]),
        )
    )
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"])
