"""``python -m rcvcore <command>``: every dashboard action, headless.

Each command lives in its own module exposing ``add_parser(subparsers)``; the parser's ``func``
receives the parsed arguments and returns the exit status. User errors (:class:`UserError`) print
one clear message and exit with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

COMMAND_MODULES = ["models", "data", "scan", "train", "runs"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rcvcore",
        description="Scale-covariance scans (RCV), pruning and transfer of CNNs for "
                    "histopathology.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:   # a missing module is an error, never a silently lost command
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
