"""Rank and world from the environment, and the process group: one code path for every launcher.

- `deepspeed` and `torchrun` set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
- a SLURM task (srun in any sbatch script, or submitit) has SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID; the
  rendezvous is the job's first node (SLURM_JOB_NODELIST, parsed by submitit) at a port derived from the job id,
  as torchrun's and Lightning's SLURM support do, unless MASTER_ADDR / MASTER_PORT say otherwise;
- with neither, the run is a single process.

Several processes first meet at that address within a bounded wait (launcher.rendezvous_timeout_s): a world
that cannot form ends with one line naming the ranks or the address that were missing (exit 2), and a
preemption signal during the wait ends the process at once (the wait is a Python loop of short polls, never a
blocking call). The process group (gloo on CPU, NCCL on GPU) is then built on the same store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator, set_accelerator
from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator
from deepspeed.constants import default_pg_timeout
from deepspeed.git_version_info import installed_ops
from deepspeed.ops.op_builder.builder import OpBuilder
from submitit.slurm.slurm import SlurmJobEnvironment
from torch.utils.cpp_extension import get_default_build_root

from nepa.engine.host_memory import keep_freed_memory
from nepa.errors import UserError

DEFAULT_PORT = 29500  # torchrun's
RENDEZVOUS_TIMEOUT_S = 600  # torchrun's join timeout; params: launcher.rendezvous_timeout_s
POLL_S = 0.2  # between two looks at the rendezvous: how soon a signal is acted on
JOINED = "nepa:joined:{}"  # a store key per rank


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


@dataclass(frozen=True)
class Rendezvous:
    host: str
    port: int
    source: str  # where the address came from, for the message when the world does not form


def rendezvous_address(environ: Mapping[str, str] = os.environ) -> Rendezvous | None:
    """Where the ranks meet: MASTER_ADDR (a launcher's), else the first node of the SLURM job; the port from
    MASTER_PORT, else from the SLURM job id (20000-59999), else torchrun's default. None: no address known."""
    port = environ.get("MASTER_PORT")
    job = environ.get("SLURM_JOB_ID")
    if port is None:
        port = str(20000 + int(job) % 40000) if job and job.isdigit() else str(DEFAULT_PORT)
        port_source = f"port from SLURM_JOB_ID {job}" if job and job.isdigit() else "torchrun's default port"
    else:
        port_source = "MASTER_PORT"
    if "MASTER_ADDR" in environ:
        return Rendezvous(environ["MASTER_ADDR"], int(port), f"MASTER_ADDR, {port_source}")
    if environ.get("SLURM_JOB_NODELIST"):
        first = SlurmJobEnvironment().hostnames[0]  # submitit parses SLURM's compressed list ("gpu[01-04]")
        return Rendezvous(first, int(port), f"the first node of SLURM_JOB_NODELIST, {port_source}")
    return None


def _answers(at: Rendezvous) -> bool:
    """Whether something listens at the rendezvous address now."""
    try:
        with socket.create_connection((at.host, at.port), timeout=POLL_S):
            return True
    except OSError:  # refused, unreachable, not resolvable (yet)
        return False


def rendezvous(env: DistEnv, at: Rendezvous, timeout_s: float) -> dist.TCPStore:
    """Meet the other ranks at `at` (rank 0 serves it) within `timeout_s`; the store the process group is built
    on. Every wait is a short poll, so that a signal ends the wait at once."""
    deadline = time.monotonic() + timeout_s
    where = f"{at.host}:{at.port} ({at.source})"
    if env.rank == 0:
        try:
            store = dist.TCPStore(at.host, at.port, env.world, is_master=True, wait_for_workers=False)
        except RuntimeError as error:
            raise UserError(
                f"rank 0 of {env.world}: cannot serve the rendezvous at {where}: {str(error).splitlines()[0]}; "
                "set MASTER_PORT to a free port"
            ) from None
    else:
        # A plain socket probes for rank 0's server first: c10d's client logs a stack trace per failed try.
        while not _answers(at):
            if time.monotonic() >= deadline:
                raise UserError(
                    f"rank {env.rank} of {env.world}: rank 0's rendezvous at {where} did not answer within "
                    f"{timeout_s:g} s (launcher.rendezvous_timeout_s); start every rank (srun with one task per "
                    "GPU), or set MASTER_ADDR to rank 0's host"
                )
            time.sleep(POLL_S)
        store = dist.TCPStore(at.host, at.port, env.world, is_master=False, timeout=timedelta(seconds=timeout_s))
    store.set(JOINED.format(env.rank), "1")
    everyone = [JOINED.format(rank) for rank in range(env.world)]
    if env.rank == 0 and not store.check(everyone):
        print(
            f"nepa: rank 0 of {env.world}: waiting for the other ranks at {where}, up to {timeout_s:g} s",
            file=sys.stderr,
        )
    while not store.check(everyone):
        if time.monotonic() >= deadline:
            missing = [rank for rank in range(env.world) if not store.check([JOINED.format(rank)])]
            raise UserError(
                f"rank {env.rank} of {env.world}: rank(s) {', '.join(map(str, missing))} did not join the "
                f"rendezvous at {where} within {timeout_s:g} s (launcher.rendezvous_timeout_s); start all "
                f"{env.world} processes (srun --ntasks={env.world}: one per GPU), or run with a world of the "
                "processes you start (WORLD_SIZE, SLURM_NTASKS)"
            )
        time.sleep(POLL_S)
    store.set_timeout(default_pg_timeout)  # from here on the process group's own (DeepSpeed's) timeout
    return store


def init(env: DistEnv, rendezvous_timeout_s: float = RENDEZVOUS_TIMEOUT_S) -> torch.device:
    """Join the process group (a group of one without a launcher) and return this process's device."""
    at = rendezvous_address()
    if env.world > 1 and at is None:
        raise UserError(
            f"rank {env.rank} of {env.world}: MASTER_ADDR is not set and this is no SLURM job step "
            "(no SLURM_JOB_NODELIST); export MASTER_ADDR (rank 0's host), or launch with srun, deepspeed or torchrun"
        )
    host = at.host if env.world > 1 else os.environ.get("MASTER_ADDR", "127.0.0.1")
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world), LOCAL_RANK=str(env.local_rank), MASTER_ADDR=host)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank)
    else:
        keep_freed_memory()
    if not dist.is_initialized():
        use_accelerator(cuda)
        if not cuda:
            build_cpu_comm_op()
        backend = "nccl" if cuda else "gloo"
        if env.world > 1:
            store = rendezvous(env, at, rendezvous_timeout_s)
        else:  # port 0: the kernel's free port, bound at once (concurrent lone runs on one host never collide)
            store = dist.TCPStore(host, int(os.environ.get("MASTER_PORT") or 0), 1, True, timeout=default_pg_timeout)
        os.environ["MASTER_PORT"] = str(store.port)
        device = {"device_id": torch.device("cuda", env.local_rank)} if cuda else {}  # as DeepSpeed does
        dist.init_process_group(
            backend, store=store, rank=env.rank, world_size=env.world, timeout=default_pg_timeout, **device
        )
        # DeepSpeed prints "DeepSpeed ... shm_comm_op built successfully" on stdout at every start: not the run's
        with contextlib.redirect_stdout(io.StringIO()):
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
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
