"""The client side of the `cde` command line: `context`, `prompt`, `embed` and `search`.

Only the standard library is imported at module level (the client is imported when a
command runs), so `cde --help` stays fast and works on any install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from cde_client import CdeClient, ContextSet

Handler = Callable[["CdeClient", argparse.Namespace], int]

_SNIPPET_CHARS = 100


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `context`, `prompt`, `embed` and `search` commands."""
    connection = _connection_options()

    context = subparsers.add_parser("context", help="manage context sets")
    context_commands = context.add_subparsers(
        dest="context_command", required=True, metavar="ACTION"
    )
    create = context_commands.add_parser(
        "create", parents=[connection], help="create a context set from a corpus sample"
    )
    create.add_argument("name", help="context set name")
    create.add_argument(
        "--file",
        required=True,
        help='documents: .txt (one per line), .jsonl (strings or {"text": ...}), - for stdin',
    )
    create.add_argument(
        "--replace", action="store_true", help="add a new revision to an existing set"
    )
    create.add_argument(
        "--no-activate",
        dest="activate",
        action="store_false",
        help="build the new revision beside the active one (use NAME@N, then `context activate`)",
    )
    create.add_argument("--prompt", help='prompt of the context documents (default "document")')
    create.add_argument("--seed", type=int, help="sampling seed (default 42)")
    create.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    create.set_defaults(func=run, handler=_context_create)

    listing = context_commands.add_parser("list", parents=[connection], help="list context sets")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.add_argument(
        "--all-tenants", action="store_true", help="every tenant's sets (admin API key)"
    )
    listing.set_defaults(func=run, handler=_context_list)

    show = context_commands.add_parser(
        "show", parents=[connection], help="describe a context set and list its revisions"
    )
    show.add_argument("name", help="NAME (the active revision) or NAME@N")
    show.add_argument("--documents", action="store_true", help="also print the sampled documents")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=run, handler=_context_show)

    delete = context_commands.add_parser(
        "delete", parents=[connection], help="delete a context set, or one inactive revision"
    )
    delete.add_argument("name", help="NAME (the whole set) or NAME@N (one inactive revision)")
    delete.set_defaults(func=run, handler=_context_delete)

    activate = context_commands.add_parser(
        "activate", parents=[connection], help="make a retained revision the one NAME serves"
    )
    activate.add_argument("name")
    activate.add_argument("revision", type=int, help="revision number")
    activate.set_defaults(func=run, handler=_context_activate)

    prompt = subparsers.add_parser("prompt", help="manage prefix prompts")
    prompt_commands = prompt.add_subparsers(dest="prompt_command", required=True, metavar="ACTION")
    prompt_list = prompt_commands.add_parser("list", parents=[connection], help="list prompts")
    prompt_list.add_argument("--json", action="store_true", help="print JSON lines")
    prompt_list.set_defaults(func=run, handler=_prompt_list)
    put = prompt_commands.add_parser(
        "put", parents=[connection], help="create or replace a custom prompt"
    )
    put.add_argument("name")
    put.add_argument("text", help='the prefix, e.g. "search_query: "')
    put.set_defaults(func=run, handler=_prompt_put)
    prompt_delete = prompt_commands.add_parser(
        "delete", parents=[connection], help="delete a custom prompt"
    )
    prompt_delete.add_argument("name")
    prompt_delete.set_defaults(func=run, handler=_prompt_delete)

    embed = subparsers.add_parser(
        "embed", parents=[connection], help="embed texts (JSON on stdout, or --output .npy)"
    )
    embed.add_argument(
        "texts", nargs="+", metavar="TEXT", help="texts to embed; - reads lines from stdin"
    )
    embed.add_argument("--context", help="context set name (default: the built-in context)")
    embed.add_argument("--prompt", help='prompt name, e.g. "query" (default "document")')
    embed.add_argument("--no-normalize", action="store_true", help="return raw embeddings")
    embed.add_argument("--output", type=Path, help="write a float32 [n, hidden] .npy file")
    embed.set_defaults(func=run, handler=_embed)

    search = subparsers.add_parser(
        "search", parents=[connection], help="rank documents for queries (a quick demo)"
    )
    search.add_argument("queries", nargs="+", metavar="QUERY")
    search.add_argument("--docs", required=True, help="documents file (.txt or .jsonl)")
    search.add_argument("--context", help="context set name (default: the built-in context)")
    search.add_argument("--top-k", type=int, default=5, help="results per query (default 5)")
    search.set_defaults(func=run, handler=_search)


def run(args: argparse.Namespace) -> int:
    """Run the chosen command; errors become one line on stderr and a non-zero status."""
    from cde_client import CdeClient, CdeError, Unavailable

    try:
        with CdeClient(
            args.address,
            api_key=args.api_key,
            tls=args.tls,
            root_certificates=args.ca_cert,
            timeout=args.timeout,
        ) as client:
            handler: Handler = args.handler
            return handler(client, args)
    except Unavailable as error:
        _fail(f"{error} — is the gateway running at {args.address}?")
    except CdeError as error:
        _fail(str(error))
    except (OSError, ValueError, TypeError) as error:
        _fail(str(error) or type(error).__name__)
    return 1


# --- commands -------------------------------------------------------------------------------


def _context_create(client: CdeClient, args: argparse.Namespace) -> int:
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    context_set = client.create_context_set(
        args.name,
        read_documents(args.file),
        replace=args.replace,
        activate=args.activate,
        prompt=args.prompt,
        seed=args.seed,
        progress=progress,
    )
    print(
        f"created {context_set.name} revision {context_set.revision}: "
        f"{context_set.source_document_count} documents → {context_set.context_size} "
        f"({context_set.sampling})"
        + (
            ""
            if context_set.active_revision == context_set.revision
            else f"; not active (revision {context_set.active_revision} is): use "
            f"{context_set.name}@{context_set.revision}, then `cde context activate "
            f"{context_set.name} {context_set.revision}`"
        )
    )
    return 0


def _context_list(client: CdeClient, args: argparse.Namespace) -> int:
    sets = list(client.list_context_sets(all_tenants=args.all_tenants))
    if args.json:
        for context_set in sets:
            print(json.dumps(_context_set_json(context_set)))
        return 0
    if not sets:
        print("no context sets")
        return 0
    rows = [("NAME", "REVISION", "DOCUMENTS", "SAMPLING", "CREATED", "COMPATIBLE")]
    rows += [
        (
            cs.name,
            str(cs.revision),
            str(cs.source_document_count),
            str(cs.sampling),
            cs.create_time.strftime("%Y-%m-%d %H:%M:%S"),
            "yes" if cs.compatible else "no (rebuild with --replace)",
        )
        for cs in sets
    ]
    _print_table(rows)
    return 0


def _context_show(client: CdeClient, args: argparse.Namespace) -> int:
    context_set = client.get_context_set(args.name, include_documents=args.documents)
    record = _context_set_json(context_set)
    if args.json:
        if context_set.documents is not None:
            record["documents"] = list(context_set.documents)
        record["revisions"] = [
            {
                "revision": r.revision,
                "created": r.create_time.isoformat(),
                "source_documents": r.source_document_count,
                "sampling": str(r.sampling),
                "context_id": r.context_id,
                "active": r.active,
            }
            for r in context_set.revisions
        ]
        print(json.dumps(record, indent=2))
        return 0
    width = max(map(len, record))
    for key, value in record.items():
        print(f"{key:<{width}}  {value}")
    if context_set.revisions:
        print("revisions:")
        rows = [("", "REVISION", "CREATED", "DOCUMENTS", "SAMPLING", "CONTEXT ID")]
        rows += [
            (
                "*" if r.active else "",
                str(r.revision),
                r.create_time.strftime("%Y-%m-%d %H:%M:%S"),
                str(r.source_document_count),
                str(r.sampling),
                r.context_id,
            )
            for r in context_set.revisions
        ]
        _print_table(rows)
    for document in context_set.documents or ():
        print(f"  {_snippet(document)}")
    return 0


def _context_delete(client: CdeClient, args: argparse.Namespace) -> int:
    client.delete_context_set(args.name)
    print(f"deleted {args.name}")
    return 0


def _context_activate(client: CdeClient, args: argparse.Namespace) -> int:
    context_set = client.activate_context_set(args.name, args.revision)
    print(f"activated {context_set.name} revision {context_set.revision}")
    return 0


def _prompt_list(client: CdeClient, args: argparse.Namespace) -> int:
    prompts = client.list_prompts()
    if args.json:
        for prompt in prompts:
            print(json.dumps({"name": prompt.name, "text": prompt.text, "builtin": prompt.builtin}))
        return 0
    rows = [("NAME", "TEXT", "KIND")]
    rows += [(p.name, json.dumps(p.text), "built-in" if p.builtin else "custom") for p in prompts]
    _print_table(rows)
    return 0


def _prompt_put(client: CdeClient, args: argparse.Namespace) -> int:
    prompt = client.put_prompt(args.name, args.text)
    print(f"stored prompt {prompt.name}: {json.dumps(prompt.text)}")
    return 0


def _prompt_delete(client: CdeClient, args: argparse.Namespace) -> int:
    client.delete_prompt(args.name)
    print(f"deleted prompt {args.name}")
    return 0


def _embed(client: CdeClient, args: argparse.Namespace) -> int:
    texts = _expand_stdin(args.texts)
    result = client.embed(
        texts, prompt=args.prompt, context=args.context, normalize=not args.no_normalize
    )
    if args.output is not None:
        import numpy as np

        np.save(args.output, result.embeddings)
        rows, dim = result.embeddings.shape
        print(f"wrote {rows}x{dim} float32 embeddings to {args.output}", file=sys.stderr)
        return 0
    json.dump(
        {
            "model_id": result.model_id,
            "context_set": result.context_set,
            "context_revision": result.context_revision,
            "token_counts": list(result.token_counts),
            "embeddings": result.embeddings.tolist(),
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


def _search(client: CdeClient, args: argparse.Namespace) -> int:
    import numpy as np

    if args.top_k < 1:
        raise ValueError("--top-k must be at least 1")
    documents = list(read_documents(args.docs))
    if not documents:
        raise ValueError(f"{args.docs} holds no documents")
    doc_vectors = client.embed_documents(documents, context=args.context).embeddings
    query_vectors = client.embed_queries(args.queries, context=args.context).embeddings
    scores = query_vectors @ doc_vectors.T
    for query, row in zip(args.queries, scores, strict=True):
        print(f"query: {query}")
        best = np.argsort(-row, kind="stable")[: args.top_k]
        for rank, index in enumerate(best, start=1):
            print(f"  {rank}. {row[index]:.4f}  {_snippet(documents[index])}")
    return 0


# --- helpers --------------------------------------------------------------------------------


def read_documents(path: str) -> Iterator[str]:
    """The documents of a file, read lazily (the file is opened at once, so a missing file
    fails before anything is sent). .jsonl lines are JSON strings or objects with "text";
    other files hold one document per line; blank lines are skipped; "-" reads stdin."""
    jsonl = path.endswith(".jsonl")
    if path == "-":
        return _documents_of(sys.stdin, jsonl, "<stdin>", close=False)
    return _documents_of(open(path, encoding="utf-8"), jsonl, path, close=True)


def _documents_of(handle: TextIO, jsonl: bool, name: str, *, close: bool) -> Iterator[str]:
    try:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not jsonl:
                yield line
                continue
            try:
                value: Any = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{name}:{number}: not JSON ({error.msg})") from None
            if isinstance(value, dict):
                value = value.get("text")
            if not isinstance(value, str):
                raise ValueError(f'{name}:{number}: expected a JSON string or {{"text": "..."}}')
            yield value
    finally:
        if close:
            handle.close()


def _connection_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=os.environ.get("CDE_ADDRESS", "localhost:50051"),
        help="gateway host:port (env CDE_ADDRESS; default localhost:50051)",
    )
    group.add_argument(
        "--api-key",
        default=os.environ.get("CDE_API_KEY"),
        help="API key (env CDE_API_KEY)",
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    group.add_argument("--ca-cert", type=Path, help="PEM file of the CA to trust (implies --tls)")
    group.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per call (default 120)"
    )
    return parser


def _expand_stdin(texts: list[str]) -> list[str]:
    expanded: list[str] = []
    for text in texts:
        if text == "-":
            expanded.extend(line.rstrip("\r\n") for line in sys.stdin if line.strip())
        else:
            expanded.append(text)
    return expanded


def _context_set_json(context_set: ContextSet) -> dict[str, Any]:
    return {
        "name": context_set.name,
        "revision": context_set.revision,
        "active_revision": context_set.active_revision,
        "created": context_set.create_time.isoformat(),
        "source_documents": context_set.source_document_count,
        "context_size": context_set.context_size,
        "sampling": str(context_set.sampling),
        "prompt": context_set.prompt,
        "compatible": context_set.compatible,
        "model_fingerprint": context_set.model_fingerprint,
        "context_id": context_set.context_id,
    }


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


def _fail(message: str) -> None:
    print(f"cde: error: {message}", file=sys.stderr)
