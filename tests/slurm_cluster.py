"""A real one-node SLURM on localhost for the tests: munged, slurmctld and slurmd, all state in one temp folder.

The settings are the ones that work in a container without systemd or cgroup delegation: no cgroups, no
accounting (job state comes from squeue), the node's CPUs and memory from the machine. Every daemon runs in the
foreground as a child of the test process and is stopped by its pid; nothing system-wide is touched (own munge
socket, own ports), so two clusters can run side by side. Needs root and Debian's slurm-wlm + munge.

`python tests/slurm_cluster.py` starts one for you to try `snakemake --profile slurm` on (README, SLURM):
it prints the SLURM_CONF line for another shell and runs until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
MUNGE_KEY = Path("/etc/munge/munge.key")  # created by the munge package


def unavailable_reason() -> str | None:
    """Why a local cluster cannot start here (None: it can)."""
    if os.geteuid() != 0:
        return "a local SLURM needs root (slurmd runs jobs as their user)"
    missing = [name for name in (*DAEMONS, "sbatch", "squeue", "scontrol", "srun") if shutil.which(name) is None]
    if missing:
        return f"SLURM/munge binaries not found: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    if not MUNGE_KEY.is_file():
        return f"{MUNGE_KEY} not found (reinstall munge)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """What slurmd will accept: it drains a node that claims more memory than it has."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.8)


@dataclass
class SlurmCluster:
    root: Path
    node: str
    cpus: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, submitit, a job) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def cmd(self, *args: str) -> str:
        out = subprocess.run(args, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise RuntimeError(f"{' '.join(args)}: exit {out.returncode}: {out.stderr.strip()}")
        return out.stdout.strip()

    def job_state(self, job_id: str) -> str:
        """The job's state as squeue shows it ('' once SLURM has forgotten it)."""
        return self.cmd("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T")

    def release(self, job_id: str, timeout_s: float = 60) -> None:
        """Start a requeued job now instead of after SLURM's requeue delay (~145 s here).

        Not at once: slurmd refuses ("Job credential revoked") a launch dated in the same second as the
        requeue that ended the previous run, and the job then fails. So: once the node is free, 2 s later."""
        self._wait(lambda: self.job_state(job_id) == "PENDING", timeout_s, f"job {job_id} requeued")
        self.wait_idle(timeout_s)
        time.sleep(2)
        self.cmd("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Until the node takes jobs: up, no job on it."""
        self._wait(lambda: self.cmd("sinfo", "-h", "-n", self.node, "-o", "%t") == "idle", timeout_s, "node idle")

    def reconfigure(self, conf: str) -> None:
        """Replace slurm.conf, have the daemons read it again, and wait until the node takes jobs again."""
        self.conf.write_text(conf)
        self.cmd("scontrol", "reconfigure")
        self.wait_idle()

    def write_conf(self) -> None:
        state = self.root / "state"
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        self.conf.write_text(
            f"""\
ClusterName=nepa-test
SlurmctldHost={self.node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={self.root / "munge" / "munge.socket"}
CredType=cred/munge
StateSaveLocation={state}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "slurmctld.pid"}
SlurmdPidFile={self.root / "slurmd.pid"}
SlurmctldLogFile={self.root / "log" / "slurmctld.log"}
SlurmdLogFile={self.root / "log" / "slurmd.log"}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_real_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )

    def start(self, timeout_s: float = 60) -> None:
        munge = self.root / "munge"
        munge.mkdir()
        shutil.chown(munge, "munge", "munge")
        self.write_conf()
        logs = self.root / "log"
        self._spawn(
            [
                "munged",
                "-F",
                f"--socket={munge / 'munge.socket'}",
                f"--key-file={MUNGE_KEY}",
                f"--log-file={munge / 'munged.log'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            logs / "munged.out",
            user="munge",
        )
        self._wait(lambda: (munge / "munge.socket").exists(), timeout_s, "munged socket")
        self._spawn(["slurmctld", "-D", "-f", str(self.conf)], logs / "slurmctld.out")
        self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", self.node], logs / "slurmd.out")
        self.wait_idle(timeout_s)

    def _spawn(self, args: list[str], out: Path, user: str | None = None) -> None:
        with out.open("wb") as log:
            kw = dict(user=user, group=user, extra_groups=[]) if user else {}
            self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kw))

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}; logs: {self.root / 'log'}")
            try:
                if ready():
                    return
            except RuntimeError:  # slurmctld not answering yet
                pass
            time.sleep(0.2)
        raise TimeoutError(f"no {what} after {timeout_s:.0f} s; logs: {self.root / 'log'}")

    def stop(self, timeout_s: float = 60) -> None:
        """Cancel what still runs (slurmstepd and a job's processes outlive slurmd), then stop the daemons
        this cluster started (slurmd first, munged last), by pid."""
        if all(proc.poll() is None for proc in self.procs):
            with contextlib.suppress(RuntimeError, TimeoutError):
                jobs = self.cmd("squeue", "-h", "-o", "%i").split()
                if jobs:
                    self.cmd("scancel", *jobs)
                    self._wait(lambda: not self.cmd("squeue", "-h", "-o", "%i"), timeout_s, "jobs cancelled")
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def start_cluster(cpus: int = 2, timeout_s: float = 60) -> SlurmCluster:
    # Not under pytest's tmp folder: its 0700 parents would keep the munge user out of its socket folder.
    root = Path(tempfile.mkdtemp(prefix="nepa-slurm-"))
    root.chmod(0o755)
    cluster = SlurmCluster(root=root, node=socket.gethostname().split(".")[0], cpus=cpus)
    try:
        cluster.start(timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main() -> int:
    reason = unavailable_reason()
    if reason:
        print(f"slurm_cluster: {reason}", file=sys.stderr)
        return 2
    cluster = start_cluster(cpus=os.cpu_count() or 1)
    print(
        f"one-node SLURM up ({cluster.cpus} CPUs); in another shell:\n  export SLURM_CONF={cluster.conf}\n"
        "Ctrl-C stops it (and cancels its jobs).",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
