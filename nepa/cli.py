"""`nepa VERB`: one verb per pipeline stage. Snakemake rules and DVC stages are thin callers of these.

Every verb that reads params takes --params, `--set section.key=value` overrides, --size and --variant;
a UserError (bad input, bad params) becomes one line on stderr and exit status 2. The verbs are listed in
nepa/verbs.py; a stage verb under `launcher.kind: submitit` runs as a SLURM job (nepa/launch.py).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from nepa import __version__
from nepa.config import add_params_arguments, params_from_arguments
from nepa.dvc_lock import record
from nepa.errors import EXIT_USAGE, UserError
from nepa.files import io_error_line
from nepa.pipeline import follow_dvc_remote, verb_files
from nepa.stopping import EXIT_REQUEUE, Stopped, stop_on_signals
from nepa.verbs import VERBS


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="nepa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nepa {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers = {
        name: sub.add_parser(
            name,
            help=verb.help,
            description=verb.help,
            epilog=verb_files(name),  # what a stage reads and writes
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for name, verb in VERBS.items()
    }
    return parser, subparsers


def run_verb(name: str, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Parse the verb's arguments, resolve its params, then run it here or, a stage under submitit, on SLURM."""
    verb = VERBS[name]
    # Imported only when its verb runs, so that `nepa --help` stays fast and a verb does not pay for another's
    # heavy imports (DeepSpeed, pandas).
    module = importlib.import_module(verb.module)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    run = getattr(module, verb.function)
    if not verb.params:
        return run(parser.parse_args(argv))
    add_params_arguments(parser)
    args = parser.parse_args(argv)
    params = params_from_arguments(args)
    follow_dvc_remote(Path(args.params).parent, params)
    if verb.stage and params.launcher.kind == "submitit":
        from nepa.launch import run_on_cluster  # submitit is loaded only where a verb is sent to SLURM

        status = run_on_cluster(name, argv, params)
    else:
        status = run(args, params)
    if verb.stage and status == 0:
        record(name, argv)  # in dvc.lock, where this is a dvc.yaml stage's command (nepa/dvc_lock.py)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if not argv or argv[0] not in VERBS:
        parser.parse_args(argv or ["--help"])
        return EXIT_USAGE
    verb, rest = argv[0], argv[1:]
    previous = stop_on_signals()  # from the first instant: SLURM may preempt a verb that is still starting
    try:
        return run_verb(verb, subparsers[verb], rest)
    except Stopped as e:
        print(
            f"nepa {verb}: stopped by signal {e.signum} before training; nothing written is half-done, "
            f"run the same command again to continue (exit {EXIT_REQUEUE})",
            file=sys.stderr,
        )
        return EXIT_REQUEUE
    except UserError as e:
        print(f"nepa {verb}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a named file could not be read or written (disk full, permissions): not a bug
        if e.filename is None:
            raise
        print(f"nepa {verb}: error: {io_error_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
