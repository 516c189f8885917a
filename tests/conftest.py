"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, start_cluster, unavailable_reason

from nepa.config import DataParams
from nepa.data.embedded import find_fashion_mnist
from nepa.errors import UserError


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """Debian's dataset-fashion-mnist, which the real-data tests prepare from (skipped without it)."""
    try:
        return find_fashion_mnist(DataParams().fashion_mnist_dir)
    except UserError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A real one-node SLURM on localhost (tests/slurm_cluster.py), up for the whole session; its config
    is in SLURM_CONF for this process and everything it starts (sbatch, submitit, `nepa`, the jobs)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster()
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(cluster.root, ignore_errors=True)
