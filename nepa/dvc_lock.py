"""A stage that ran outside DVC (by hand, by Snakemake, as a SLURM job) recorded in dvc.lock, as `dvc repro`
would have recorded it: DVC then knows its outputs, so `dvc repro` and `dvc exp run` re-run only what changed
after it and never delete work they did not record.

And the other way round, `recorded`: under DVC, a stage whose checkpoints (persist: a re-run resumes them) are
of other params may start over only where DVC holds them (an experiment that changes a fine-tuning param), never
where it does not (a run of other params that nobody recorded: the engine refuses those in one line).

A verb records its stage when it succeeded and its command line is the dvc.yaml stage's command, give or take
`--set launcher.*` (where the stage ran, not what it computed: the slurm profile adds it). Any other command
(other params through `--set` or Snakemake's `--config`, another --params, --out, --init) computed something
dvc.yaml does not say, and is not recorded; neither is a stage that DVC runs itself (it records it).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROUTED = ("launcher.",)  # `--set` values that do not change what a stage computes
STAGE_OPTIONS = ("--size", "--variant", "--set")  # the options of dvc.yaml's commands
WAIT_S = 120  # another stage may be recording (DVC holds its repository lock for seconds)


def dvc_command(verb: str, argv: list[str]) -> list[str]:
    """The verb's command line as dvc.yaml would say it: without its routing `--set` values."""
    words, kept = iter(argv), ["nepa", verb]
    for word in words:
        if word == "--set":
            value = next(words, "")
            if value.startswith(ROUTED):
                continue
            kept += [word, value]
        else:
            kept.append(word)
    return kept


def recorder(environ: Mapping[str, str]) -> bool:
    """Whether this process records its stage: not one that DVC runs (DVC records it), and one process per run:
    rank 0 of a launch, the verb that submitted a SLURM job rather than the job's tasks."""
    return not environ.get("DVC_STAGE") and not environ.get("SUBMITIT_EXECUTOR") and environ.get("RANK", "0") == "0"


def recorded(path: Path, root: Path = Path(".")) -> bool:
    """Whether DVC runs this process and dvc.lock records `path` as it is, its content in DVC's cache."""
    if not os.environ.get("DVC_STAGE"):
        return False
    from dvc.repo import Repo

    target = path.resolve()
    with Repo(str(root)) as repo:
        outs = [out for stage in repo.index.stages for out in stage.outs if Path(out.fs_path) == target]
        return any(
            out.hash_info.value and not out.changed_checksum() and repo.cache.local.exists(out.hash_info.value)
            for out in outs
        )


def record(verb: str, argv: list[str], root: Path = Path(".")) -> None:
    """Record the stage whose dvc.yaml command is this verb's command line in `root`'s dvc.lock, if there is one;
    a failure to record is one line on stderr, never a failed stage."""
    if not recorder(os.environ) or not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        return
    if any(word.startswith("--") and word.split("=")[0] not in STAGE_OPTIONS for word in argv):
        return  # --params, --out, --init...: no command of dvc.yaml (nepa/pipeline.py), known without DVC
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo

    command = dvc_command(verb, argv)
    logging.getLogger("dvc").setLevel(logging.WARNING)  # its "Updating lock file": the line below says it
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with Repo(str(root)) as repo:
                stage = next((s for s in repo.index.stages if s.cmd and shlex.split(s.cmd) == command), None)
                if stage is None:
                    return
                repo.commit(stage.addressing, force=True)
                print(f"nepa {verb}: recorded stage {stage.addressing} in dvc.lock", file=sys.stderr)
                return
        except LockError:
            if time.monotonic() > deadline:
                print(f"nepa {verb}: dvc.lock is held by another DVC command; `dvc commit` records it", file=sys.stderr)
                return
            time.sleep(1)
        except DvcException as e:
            print(f"nepa {verb}: not recorded in dvc.lock ({e}); `dvc commit` records it", file=sys.stderr)
            return
