"""`nepa VERB`: one verb per pipeline stage. Snakemake rules and DVC stages are thin callers of these.

Every verb reads params.yaml (--params), accepts `--set section.key=value` overrides and `--size`, and
turns a UserError (bad input, bad params) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from nepa.config import Params, load_params
from nepa.errors import EXIT_USAGE, UserError

# verb -> (module, function, one-line help). Modules are imported only when their verb runs, so that
# `nepa --help` stays fast and a verb does not pay for another's heavy imports (DeepSpeed, pandas).
VERBS: dict[str, tuple[str, str, str]] = {
    "prepare": ("nepa.data.prepare", "main", "write a dataset (embedded | imagenet | ade20k) into versionable shards"),
    "pretrain": ("nepa.engine.pretrain", "main", "NEPA pretraining with DeepSpeed ZeRO, EMA, exact resume"),
    "export": ("nepa.engine.export", "main", "export EMA (or online) weights to safetensors or the official layout"),
    "finetune": ("nepa.eval.finetune", "main", "ImageNet-style classification fine-tuning"),
    "probe": ("nepa.eval.probe", "main", "linear probe on frozen features (last and mean embedding)"),
    "segment": ("nepa.eval.segment", "main", "ADE20K-style semantic segmentation with a UperNet head"),
    "report": ("nepa.report", "main", "our numbers beside the paper's: tables, curves, maps"),
    "import-official": ("nepa.official_cli", "main", "convert a released SixAILab checkpoint to nepa files"),
    "params": ("nepa.config_cli", "main", "print the resolved params (presets, variant and --set applied)"),
    "estimate": ("nepa.estimate", "main", "GPU-hours and wall time of each stage of a full reproduction"),
    "plan": ("nepa.estimate", "plan_main", "every job of the DAG with schedule, batch, GPUs, GPU-hours; audited"),
}


def add_params_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one param, e.g. --set pretrain.epochs=5 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--size", choices=["tiny", "small", "base", "large"], help="model size (default: params)")
    parser.add_argument("--variant", help="ablation variant from nepa/presets.py (default: params)")


class RunOnCluster(BaseException):  # like SystemExit, not an error: a verb's `except Exception` lets it pass
    """The verb runs as a SLURM job, not here (params.launcher.kind); main() submits it and waits."""

    def __init__(self, params: Params) -> None:
        self.params = params


def parse_with_params(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, Params]:
    """Parse a verb's arguments (its own plus the params ones) and resolve its params.

    Every stage verb starts here, so this is where `launcher.kind: submitit` takes over: once the arguments are
    checked and the params resolved, RunOnCluster stops the verb and main() runs its command line on SLURM.
    """
    add_params_args(parser)
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *([f"variant={args.variant}"] if args.variant else [])]
    params = load_params(args.params, tuple(overrides), size=args.size)
    if params.launcher.kind != "local":
        raise RunOnCluster(params)
    return args, params


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="nepa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers = {verb: sub.add_parser(verb, help=text, description=text) for verb, (_, _, text) in VERBS.items()}
    return parser, subparsers


def _load_verb(verb: str) -> Callable[[argparse.ArgumentParser, list[str]], int] | None:
    module_name, function, _ = VERBS[verb]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the verb's module has not landed yet
            return None
        raise
    return getattr(module, function)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if not argv or argv[0] not in VERBS:
        parser.parse_args(argv or ["--help"])
        return EXIT_USAGE
    verb, rest = argv[0], argv[1:]
    run = _load_verb(verb)
    if run is None:
        print(f"nepa {verb}: not available in this version yet (see the open issues)", file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            return run(subparsers[verb], rest)
        except RunOnCluster as dispatch:
            from nepa.launch import run_on_cluster  # submitit is loaded only where a verb is sent to SLURM

            return run_on_cluster(verb, rest, dispatch.params)
    except UserError as e:
        print(f"nepa {verb}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    # `python -m nepa.cli` (how a SLURM job runs a verb) loads this file twice, as __main__ and as nepa.cli,
    # which the verbs import; run nepa.cli's main so that it catches nepa.cli's RunOnCluster.
    from nepa.cli import main as nepa_main

    sys.exit(nepa_main())
