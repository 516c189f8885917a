"""Rank and world from the environment, and the process group: one code path for every launcher.

- `deepspeed` and `torchrun` set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
- a SLURM task (srun, submitit) has SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, and the job script
  exports MASTER_ADDR (the first node) and optionally MASTER_PORT;
- with neither, the run is a single process.
The process group is gloo on CPU and NCCL on GPU.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import torch.utils.cpp_extension
from deepspeed.accelerator import get_accelerator

from nepa.errors import UserError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environ(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """This process's place in the job, from the launcher's variables (see the module doc)."""
    for rank, world, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if rank in environ and world in environ:
            return DistEnv(int(environ[rank]), int(environ[world]), int(environ.get(local, environ[rank])))
    return DistEnv()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_cpu_comm_op() -> None:
    """Build DeepSpeed's CPU shared-memory collectives op once (it is cached), surviving an interrupted build.

    The op only speeds up collectives between processes on one host; where it cannot build (no compiler)
    DeepSpeed is told to go without it rather than fail at start.

    torch's JIT build guards its folder with a plain `lock` file: a build killed part-way (Ctrl-C, a
    preempted job) leaves it behind, and every later DeepSpeed start on the host then waits on it forever.
    nepa builds under an flock instead, which the kernel drops when its holder dies; so a `lock` met while
    holding the flock was left by a dead build and is removed. (A DeepSpeed build started outside nepa at
    that moment would be raced; builds on a host running nepa go through here.)
    """
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):  # as DeepSpeed decides
        return
    # torch's own rule for the op's folder (TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions/pyXY_cpu).
    folder = Path(torch.utils.cpp_extension._get_build_directory(builder.name, verbose=False))
    with open(folder / "nepa.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        leftover = folder / "lock"
        if leftover.exists():
            print(f"nepa: removed {leftover}, left by an interrupted DeepSpeed op build", file=sys.stderr)
            leftover.unlink(missing_ok=True)
        if not (folder / f"{builder.name}.so").exists():
            print(f"nepa: building DeepSpeed's CPU communication op once (~1 min; cached in {folder})", file=sys.stderr)
        try:
            builder.load(verbose=False)
        except Exception as error:  # an optional speed-up: any build failure falls back to gloo
            # e.g. no C++ compiler (the CPU image): DeepSpeed skips an op marked incompatible.
            deepspeed.ops.__compatible_ops__[builder.NAME] = False
            reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            print(f"nepa: DeepSpeed's CPU communication op did not build ({reason}); collectives use plain gloo "
                  "(a C++ compiler and ninja build it)", file=sys.stderr)  # fmt: skip


def init(env: DistEnv) -> torch.device:
    """Join the process group (a group of one without a launcher) and return this process's device."""
    if env.world > 1 and "MASTER_ADDR" not in os.environ:
        raise UserError(
            f"rank {env.rank} of {env.world}: MASTER_ADDR is not set; in a SLURM script export "
            "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1), or launch with deepspeed/torchrun"
        )
    # A lone process picks a free port so that concurrent single-process runs on one host do not collide.
    port = os.environ.get("MASTER_PORT") or str(DEFAULT_PORT if env.world > 1 else _free_port())
    os.environ.update(
        RANK=str(env.rank), WORLD_SIZE=str(env.world), LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"), MASTER_PORT=port,
    )  # fmt: skip
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        if not cuda:
            build_cpu_comm_op()
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False)
    return torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")


def several_processes() -> bool:
    """Whether this process is one of several in a process group (collectives are needed)."""
    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if several_processes():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
