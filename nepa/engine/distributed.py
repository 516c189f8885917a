"""Rank and world from the environment, and the process group: one code path for every launcher.

- `deepspeed` and `torchrun` set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
- a SLURM task (srun, submitit) has SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, and the job script
  exports MASTER_ADDR (the first node) and optionally MASTER_PORT;
- with neither, the run is a single process.
The process group is gloo on CPU and NCCL on GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator, set_accelerator
from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator
from deepspeed.git_version_info import installed_ops
from deepspeed.ops.op_builder.builder import OpBuilder
from torch.utils.cpp_extension import get_default_build_root

from nepa.engine.host_memory import keep_freed_memory
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


def extensions_root() -> Path:
    """Where torch JIT-builds DeepSpeed's ops: TORCH_EXTENSIONS_DIR when set, else a folder of this Python
    environment under torch's default root.

    One folder per environment: torch's default is shared by every environment of a user, and each one's
    build rewrites the op for its own paths, so two environments used in turn rebuild it in turn (minutes).
    """
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return Path(get_default_build_root()) / f"nepa-{Path(sys.prefix).name.lstrip('.')}-{environment}"


def build_cpu_comm_op() -> None:
    """Make DeepSpeed's CPU shared-memory collectives op ready before DeepSpeed starts, saying so while it waits
    or builds; where it cannot be had, DeepSpeed starts without it (plain gloo) after one line saying why.

    Prebuilt at install (`DS_BUILD_SHM_COMM=1`, as in the CPU image) DeepSpeed imports it and nothing happens
    here. Otherwise torch JIT-builds it (~1 min) into extensions_root()/<op>, whose path torch takes from
    TORCH_EXTENSIONS_DIR, its documented override: nepa sets it for the build. torch guards the folder with a
    plain `lock` file that a build killed part-way leaves behind, and every later start then waits on it
    forever; nepa builds under an flock instead, which the kernel drops when its holder dies, so a `lock` met
    while holding the flock was left by a dead build and is removed. (A DeepSpeed build started outside nepa
    at that moment would be raced; builds on a host running nepa go through here.)
    """
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):  # as DeepSpeed decides
        return
    if installed_ops.get(builder.name):
        return
    root = extensions_root()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)
    folder = root / builder.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "nepa.flock").touch()
    except OSError as error:
        _start_without(builder, f"{folder}: {error.strerror}; set TORCH_EXTENSIONS_DIR to a writable folder")
        return
    with open(folder / "nepa.flock", "w") as guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"nepa: waiting for another process to build DeepSpeed's CPU communication op in {folder}",
                file=sys.stderr,
            )
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
            reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            _start_without(builder, f"{reason}; a C++ compiler and ninja build it")


def _start_without(builder: OpBuilder, reason: str) -> None:
    """DeepSpeed 0.19.8 has no public switch for this op: its TorchBackend builds it whenever the probe result
    it caches in `deepspeed.ops.__compatible_ops__` says compatible (the cache is kept so that edits to it
    persist). Marking the op incompatible there is the one way to have DeepSpeed start without it."""
    deepspeed.ops.__compatible_ops__[builder.NAME] = False
    print(
        f"nepa: DeepSpeed's CPU communication op is not available ({reason}); collectives use plain gloo",
        file=sys.stderr,
    )


def use_accelerator(cuda: bool) -> None:
    """DeepSpeed's accelerator for the device nepa runs on, through DeepSpeed's public set_accelerator.

    `import deepspeed` has already picked one by probing (on a host without CUDA the CPU one, logging a line
    on stdout; `DS_ACCELERATOR=cpu` skips the probe and the line). It is replaced only where the probe found
    another device than nepa's, e.g. an Apple or Intel GPU that nepa does not train on.
    """
    if get_accelerator().device_name() != ("cuda" if cuda else "cpu"):
        set_accelerator(CUDA_Accelerator() if cuda else CPU_Accelerator())


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
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world),
        LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
        MASTER_PORT=port,
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank)
    else:
        keep_freed_memory()
    if not dist.is_initialized():
        use_accelerator(cuda)
        if not cuda:
            build_cpu_comm_op()
        # DeepSpeed prints "DeepSpeed ... shm_comm_op built successfully" on stdout at every start: not the run's
        with contextlib.redirect_stdout(io.StringIO()):
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
