"""`launcher.kind: submitit`: a stage verb submits its own command line as a SLURM job and waits for it.

Outside (the shell, Snakemake, DVC): `nepa VERB ARGS` resolves its params, then `run_on_cluster` submits
`python -m nepa.cli VERB ARGS --set launcher.kind=local` through submitit with the stage's resources
(params.launcher.resources(VERB)), prints the job id and log paths, streams task 0's log, and exits with the
job's status, so a workflow sees the job's success or failure as the verb's own. While the job waits it says
SLURM's reason (again every PENDING_NOTE_S); a reason that waiting cannot clear (more nodes or time than the
partition allows, an invalid account or QOS...) cancels the job with one line naming the setting (exit 2).

Inside: every SLURM task (one per GPU, or launcher.processes per node on CPU) runs a `StageTask`, which sets
the torch/DeepSpeed rendezvous (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) from submitit's job
environment and runs the verb as a child process. On preemption or near the time limit SLURM signals the
whole step (submitit's USR2): the verb saves its checkpoint and exits, submitit requeues the job, and the
requeued job runs the same command, which resumes from the checkpoint. The same path runs 1 CPU task or
N nodes x G GPUs.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from nepa.batch import TRAINED, stage_batch
from nepa.config import LauncherParams, Params
from nepa.errors import UserError

# squeue states after which the job may still run (any other, or none: SLURM has ended it).
ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}
    | {"RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
)
RESULT_GRACE_S = 10  # results written just before the job ended may show late on a shared file system
MAX_POLL_S = 30  # the longest pause between two squeue calls: slurmctld serves every waiting stage
PENDING_NOTE_S = 600  # while a job waits, its state and reason again this often


def sbatch_parameters(verb: str, launcher: LauncherParams) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of one stage's job."""
    r = launcher.resources(verb)
    return dict(
        job_name=f"nepa-{verb}",
        partition=r.partition,
        account=r.account,
        qos=r.qos,
        constraint=r.constraint,
        nodes=r.nodes,
        ntasks_per_node=r.gpus_per_node or launcher.processes,  # one task per GPU, as DeepSpeed expects
        gpus_per_node=r.gpus_per_node or None,
        cpus_per_task=r.cpus_per_task,
        mem=f"{r.mem_gb}GB",
        time=r.time_min,
        signal_delay_s=r.signal_delay_s,
        srun_args=list(r.srun_args),
        # submitit logs its INFO lines to stdout: keep the stage's stdout its own (warnings still go to stderr)
        setup=["export SUBMITIT_LOG_LEVEL=${SUBMITIT_LOG_LEVEL:-WARNING}", *r.setup],
        additional_parameters=dict(r.extra_sbatch),
    )


def executor(verb: str, launcher: LauncherParams) -> submitit.SlurmExecutor:
    r = launcher.resources(verb)
    try:
        ex = submitit.SlurmExecutor(
            folder=Path(launcher.folder) / verb / "%j", max_num_timeout=r.max_timeouts, python=r.python
        )
    except RuntimeError as e:  # no srun on PATH
        raise UserError(f"launcher.kind is submitit but this machine has no SLURM client ({e})") from None
    ex.update_parameters(**sbatch_parameters(verb, launcher))
    return ex


class StageTask(submitit.helpers.Checkpointable):
    """One SLURM task of a stage: `python -m nepa.cli VERB ARGS` as a child process, with this task's rank.

    A child process, not a call: the verb installs its own signal handlers (save on SIGTERM/USR1/USR2) and
    may exit, while submitit's handlers here decide about the requeue and record the result.
    """

    _child: subprocess.Popen | None = None  # the running verb (not pickled: checkpoint() returns a fresh task)

    def __init__(self, args: list[str], cwd: str) -> None:
        self.args, self.cwd = args, cwd

    def __call__(self) -> int:
        # torchrun's variables from SLURM's (task 0's node, a port from the job id); each task keeps every
        # GPU of its node visible and picks its own with LOCAL_RANK, as under torchrun or `deepspeed`.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        interrupted = _record_interruptions()
        command = [sys.executable, "-m", "nepa.cli", *self.args]
        self._child = subprocess.Popen(command, cwd=self.cwd, env=_job_threads(os.environ))
        status = self._child.wait()
        if interrupted:
            # SLURM is requeueing or cancelling the job: the outcome is the requeued run's (or SLURM's), so
            # leave no result behind for the waiting verb to take as final.
            raise SystemExit(status)
        return status if status >= 0 else 128 - status  # killed by a signal: the shell's convention

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        # submitit calls this on task 0 at the preemption/time-limit signal and requeues the job as soon as it
        # returns. SLURM signalled the verb too: let it finish saving first. WNOWAIT leaves the child unreaped
        # for the Popen.wait() that this signal interrupted.
        if self._child is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, self._child.pid, os.WEXITED | os.WNOWAIT)
        return submitit.helpers.DelayedSubmission(StageTask(self.args, self.cwd))


# What caps a process's compute threads. sbatch passes the submitting shell's environment to the job, and
# Snakemake sets these to a rule's threads: 1 for a rule that only waits for its SLURM job.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _job_threads(env: Mapping[str, str]) -> dict[str, str]:
    """The task's environment with its thread limits set to the CPUs SLURM gave it (cpus_per_task)."""
    cpus = env.get("SLURM_CPUS_PER_TASK")
    return {**env, **dict.fromkeys(THREAD_VARIABLES, cpus)} if cpus else dict(env)


def _record_interruptions() -> list[int]:
    """Note SIGTERM and submitit's preemption signal (then let submitit's handlers act on them)."""
    seen: list[int] = []
    for sig in (signal.SIGTERM, signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]):
        previous = signal.getsignal(sig)

        def record(signum: int, frame: Any, previous: Any = previous) -> None:
            seen.append(signum)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, record)
    return seen


@contextlib.contextmanager
def _outside_any_job() -> Iterator[None]:
    """Submitted from inside a SLURM job (Snakemake's slurm executor), a job would inherit that job's
    allocation variables; submitit's clean_env drops them, but where the cluster's config is must stay."""
    conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if conf:
            os.environ["SLURM_CONF"] = conf
        yield


@dataclass(frozen=True)
class QueueEntry:
    state: str  # '' once SLURM has forgotten the job
    reason: str = ""  # why it is in that state ('' where SLURM says None)
    partition: str = ""


def queue_entry(job_id: str) -> QueueEntry | None:
    """The job's state, reason and partition from squeue, which works with and without accounting (sacct);
    None when SLURM does not answer (a controller restart is no reason to give up)."""
    try:
        command = ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r|%P"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode:
        return QueueEntry("") if "Invalid job id" in out.stderr else None
    if not out.stdout.strip():
        return QueueEntry("")
    state, reason, partition = [*out.stdout.strip().splitlines()[0].split("|"), "", ""][:3]
    return QueueEntry(state, "" if reason == "None" else reason, partition)


# Pending reasons that waiting cannot clear: the job asks for what its partition, account or QOS never allows
# (https://slurm.schedmd.com/job_reason_codes.html); the launcher setting that asked for it, and what it means.
HOPELESS = {
    "PartitionNodeLimit": ("nodes", "more nodes than partition {partition} has"),  # checked: it also means nodes down
    "PartitionTimeLimit": ("time_min", "more time than partition {partition} allows"),
    "MaxMemPerLimit": ("mem_gb", "more memory than partition {partition} allows"),
    "InvalidAccount": ("account", "an account that does not exist"),
    "AccountNotAllowed": ("account", "an account that partition {partition} does not allow"),
    "InvalidQOS": ("qos", "a QOS that does not exist"),
    "QOSNotAllowed": ("qos", "a QOS that the partition or account does not allow"),
    "BadConstraints": ("constraint", "node features that no node has"),
}
# QOSMaxWallDurationPerJobLimit, AssocMaxNodePerJobLimit, QOSMinCpuNotSatisfied...: one job's request beyond a
# QOS or association limit (not MaxJobs*/PerUser ones, which clear as other jobs end).
PER_JOB_LIMIT = re.compile(r"^(QOS|Assoc)(Max|Min)(?P<what>[A-Za-z]+?)(PerJob|PerNode|NotSatisfied)")
PER_JOB_KEYS = {"Node": "nodes", "Wall": "time_min", "Cpu": "cpus_per_task", "Mem": "mem_gb", "GRES": "gpus_per_node"}


def hopeless(entry: QueueEntry, verb: str, launcher: LauncherParams) -> str | None:
    """What makes a pending job unable ever to start as asked, and the setting to change; None: waiting may do."""
    if entry.reason in HOPELESS:
        key, meaning = HOPELESS[entry.reason]
        meaning = meaning.format(partition=entry.partition or "its partition")
    elif m := PER_JOB_LIMIT.match(entry.reason):
        key = next((k for part, k in PER_JOB_KEYS.items() if m["what"].startswith(part)), "qos")
        meaning = "more than a per-job limit of its QOS or association allows"
    else:
        return None
    asked = launcher.resources(verb)
    if entry.reason == "PartitionNodeLimit":
        size = partition_nodes(entry.partition)
        if size is None or asked.nodes <= size:
            return None  # the partition's nodes are down or drained: that can clear
        meaning = f"{asked.nodes} nodes, where partition {entry.partition} has {size}"
    where = f"launcher.stages.{verb}.{key}" if verb in launcher.stages else f"launcher.slurm.{key}"
    return f"it asks for {meaning}; set {where} (now {getattr(asked, key)})"


def partition_nodes(partition: str) -> int | None:
    """The most nodes a job of `partition` can have (its node count, or MaxNodes if lower); None if unknown."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "partition", "-o", partition], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return None
    fields = dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)
    counts = [int(fields[k]) for k in ("TotalNodes", "MaxNodes") if fields.get(k, "").isdigit()]
    return min(counts) if out.returncode == 0 and counts else None


class _Tail:
    """Copies what a log file gains to one of our streams."""

    def __init__(self, path: Path, out: TextIO) -> None:
        self.path, self.out, self.offset = path, out, 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def pump(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.out.write(self.decoder.decode(data))
            self.out.flush()


def follow(verb: str, job: submitit.Job, launcher: LauncherParams) -> str | None:
    """Stream task 0's logs until every task has left a result (None) or the job has ended without; say the job's
    state and SLURM's reason as they change, and again every PENDING_NOTE_S while it waits. A job that cannot
    ever start as asked is cancelled: a UserError naming the setting."""
    tails = [_Tail(job.paths.stdout, sys.stdout), _Tail(job.paths.stderr, sys.stderr)]
    results = [job.task(i).paths.result_pickle for i in range(job.num_tasks)]
    entry, shown, shown_at = QueueEntry("PENDING"), None, 0.0
    start, ended_at, poll_s, next_poll = time.monotonic(), None, 1.0, 0.0
    while True:
        for tail in tails:
            tail.pump()
        if all(p.exists() for p in results):
            return None  # the tasks' output came before their results: it is all copied
        now = time.monotonic()
        if now >= next_poll:
            entry = queue_entry(job.job_id) or entry
            waiting = entry.state == "PENDING"
            if (entry.state, entry.reason) != shown or (waiting and now - shown_at >= PENDING_NOTE_S):
                again = "still " if (entry.state, entry.reason) == shown else ""
                since = f" after {(now - start) / 60:.0f} min" if again else ""
                why = f" ({entry.reason})" if entry.reason else ""
                print(
                    f"nepa {verb}: SLURM job {job.job_id} {again}{entry.state or 'gone from the queue'}{why}{since}",
                    file=sys.stderr,
                )
                shown, shown_at = (entry.state, entry.reason), now
            if waiting and (why_not := hopeless(entry, verb, launcher)):
                job.cancel(check=False)
                raise UserError(f"SLURM job {job.job_id} cannot start ({entry.reason}): {why_not}; cancelled it")
            if entry.state in ACTIVE_STATES:
                ended_at = None
            elif ended_at is None:
                ended_at = now
            elif now - ended_at >= RESULT_GRACE_S:
                return entry.state or "gone from the queue"
            poll_s = min(poll_s * 2, MAX_POLL_S)
            next_poll = now + (1 if ended_at else poll_s)
        time.sleep(1)


def run_on_cluster(verb: str, argv: list[str], params: Params) -> int:
    """Run `nepa VERB ARGV` as a SLURM job: its exit status (the first failed task's), 1 if SLURM ended it."""
    if verb in TRAINED:  # a batch that cannot split over the job's tasks stops here, not after its wait in the queue
        stage_batch(params, verb, params.launcher.tasks(verb))
    ex = executor(verb, params.launcher)
    task = StageTask([verb, *argv, "--set", "launcher.kind=local"], os.getcwd())
    try:
        with _outside_any_job():
            job = ex.submit(task)
    except FailedJobError as e:  # sbatch's own message (submitit has printed it as is, too)
        message = "; ".join(str(e).strip().splitlines())
        raise UserError(f"sbatch refused the {verb} job: {message}") from None
    log = job.paths.stderr
    print(
        f"nepa {verb}: submitted SLURM job {job.job_id} ({ex.parameters['nodes']} node(s) x "
        f"{ex.parameters['ntasks_per_node']} task(s)); logs: {job.paths.stdout} {log}",
        file=sys.stderr,
    )
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # Snakemake cancels with SIGTERM
    try:
        ended = follow(verb, job, params.launcher)
    except KeyboardInterrupt:
        job.cancel(check=False)  # the stage must not run on, unwatched, beside a rerun of the workflow
        print(f"nepa {verb}: interrupted; cancelled SLURM job {job.job_id}; log: {log}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if ended is not None:
        print(f"nepa {verb}: SLURM job {job.job_id} ended ({ended}) without finishing; log: {log}", file=sys.stderr)
        return 1
    try:
        statuses = job.results()  # one per task: the verb's exit status
    except (FailedJobError, UncompletedJobError):  # a task itself raised (its traceback is in the log above)
        statuses = [1]
    failed = next((i for i, status in enumerate(statuses) if status), None)
    if failed is None:
        return 0
    log = job.task(failed).paths.stderr
    print(f"nepa {verb}: SLURM job {job.job_id} failed (exit status {statuses[failed]}); log: {log}", file=sys.stderr)
    return statuses[failed]
