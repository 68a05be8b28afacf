"""`cde encode`: offline, in-process embedding of one text per line into a .npy file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cde_model.dtypes import DTYPES

COMMAND = "encode"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `encode` sub-command."""
    parser = subparsers.add_parser(
        COMMAND,
        help="embed one text per line with a local model (no server)",
        description=(
            "Embed each line of IN.txt (empty lines too) with the second stage, conditioned on "
            "a context embedded by the first stage. Writes float32 [lines, hidden] to OUT.npy."
        ),
    )
    parser.add_argument("--model", required=True, help='checkpoint directory, or "demo"')
    parser.add_argument("--input-file", required=True, type=Path, metavar="IN.txt")
    parser.add_argument("--output", required=True, type=Path, metavar="OUT.npy")
    parser.add_argument(
        "--context-file",
        type=Path,
        metavar="CTX.txt",
        help="context documents, one per line, sampled or oversampled to the model's N "
        "(default: the built-in generated context)",
    )
    parser.add_argument(
        "--prompt",
        default="document",
        metavar="NAME",
        help="prefix prompt for the inputs: query, document (default), classification, clustering",
    )
    parser.add_argument(
        "--no-prompt",
        action="store_true",
        help="embed the lines as they are, with no prefix (overrides --prompt)",
    )
    parser.add_argument(
        "--no-normalize", action="store_true", help="write raw instead of L2-normalized vectors"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per model call")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.set_defaults(func=run)


def read_lines(path: Path) -> list[str]:
    """UTF-8 text, one item per line; empty lines count, a final newline ends the last line."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with path.open(encoding="utf-8-sig", newline=None) as handle:
        text = handle.read()
    if not text:
        return []
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def run(args: argparse.Namespace) -> int:
    """Run `cde encode`; errors become one line on stderr and exit status 1."""
    try:
        _encode(args)
    except Exception as exc:  # a CLI reports every failure as one line, never a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"cde encode: error: {message}", file=sys.stderr)
        return 1
    return 0


def _encode(args: argparse.Namespace) -> None:
    from cde_model.prompts import prompt_prefix

    prefix = "" if args.no_prompt else prompt_prefix(args.prompt)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    texts = read_lines(args.input_file)
    context_documents = read_lines(args.context_file) if args.context_file else None
    if context_documents is not None and not context_documents:
        raise ValueError(f"context file {args.context_file} has no lines")
    if not args.output.parent.is_dir():
        raise FileNotFoundError(f"output directory not found: {args.output.parent}")

    import numpy as np
    from cde_model import load_model
    from cde_model.encoder import build_context, encode_texts
    from tqdm import tqdm

    model = load_model(args.model, dtype=args.dtype)
    corpus_size = model.info.corpus_size
    with tqdm(total=corpus_size, desc="context", unit="doc", file=sys.stderr) as bar:
        context = build_context(
            model, context_documents, batch_size=args.batch_size, progress=bar.update
        )
        bar.update(corpus_size - bar.n)  # repeated documents are embedded once
    with tqdm(total=len(texts), desc="encode", unit="text", file=sys.stderr) as bar:
        embeddings = encode_texts(
            model,
            texts,
            context,
            prefix=prefix,
            normalize=not args.no_normalize,
            batch_size=args.batch_size,
            progress=bar.update,
        )
    with args.output.open("wb") as handle:  # np.save(path) would append ".npy" to other names
        np.save(handle, embeddings)
