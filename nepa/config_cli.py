"""`nepa params`: print the fully resolved params as YAML, to see what a stage will run with."""

from __future__ import annotations

import argparse

import yaml

from nepa.cli import parse_with_params


def main(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    _, params = parse_with_params(parser, argv)
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    return 0
