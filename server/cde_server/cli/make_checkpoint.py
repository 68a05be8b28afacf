"""`cde make-checkpoint`: write a random checkpoint in the published cde-small-v1 layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

COMMAND = "make-checkpoint"
SIZES = ("tiny", "full")
FAMILIES = ("v1", "v2")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `make-checkpoint` sub-command."""
    parser = subparsers.add_parser(
        COMMAND,
        help="write a random checkpoint in the published layout (tests, benchmarks)",
        description=(
            "Write config.json, model.safetensors and tokenizer files with random weights. "
            "tiny: hidden 64, 2 layers, N=16 (embedder_config inline); full: the real "
            "cde-small-v1 shapes (hidden 768, 12 layers, N=512, about 1.1 GB). --family v2: the "
            "cde-small-v2 layout (tiny: hidden 64, 4 layers, N=16; full: the published shapes, "
            "22 layers, about 1.2 GB, no embedder_config)."
        ),
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--family", choices=FAMILIES, default="v1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a checkpoint already in DIR"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `cde make-checkpoint`; errors become one line on stderr and exit status 1."""
    try:
        directory: Path = args.directory
        if (directory / "model.safetensors").exists() and not args.overwrite:
            raise FileExistsError(f"{directory} already holds a checkpoint (use --overwrite)")
        from cde_model.random_checkpoint import write_random_checkpoint

        write_random_checkpoint(directory, size=args.size, seed=args.seed, family=args.family)
    except Exception as exc:  # a CLI reports every failure as one line, never a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"cde make-checkpoint: error: {message}", file=sys.stderr)
        return 1
    return 0
