"""The `cde` command line: one sub-command per module, imported cheaply.

Each command module exposes `register(subparsers)` and imports only the standard library at
module level (heavy imports happen inside the command), so `cde --help` and the client
commands work with the base install (no torch, no Triton).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "cde_server.cli.encode",
    "cde_server.cli.make_checkpoint",
    "cde_server.cli.triton",
    "cde_server.cli.serve",
    "cde_server.cli.keys",
    "cde_client.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """Parser with every available sub-command registered."""
    parser = argparse.ArgumentParser(prog="cde", description="cde-small-v1 serving tools")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # command module not present in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cde` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
