"""`cde keys`: make API keys and the keys-file entries (hashes) the gateway checks them against."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `keys` sub-command (new, hash, check)."""
    parser = subparsers.add_parser(
        "keys",
        help="make API keys and keys-file entries (CDE_API_KEYS_FILE)",
        description=(
            "API keys are checked against their SHA-256 in a TOML keys file; the key itself is "
            "never stored by the server. `new` prints a fresh key (give it to the client, e.g. "
            "as CDE_API_KEY) and the entry to append to the keys file."
        ),
    )
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="generate a key; print it and its keys-file entry")
    new.add_argument("--tenant", required=True, help="tenant the key belongs to")
    new.add_argument("--admin", action="store_true", help="may list every tenant's sets")
    new.add_argument(
        "--append", type=Path, metavar="FILE", help="append the entry to this keys file"
    )
    new.set_defaults(func=_new)
    hashed = actions.add_parser("hash", help="keys-file entry for an existing key (read on stdin)")
    hashed.add_argument("--tenant", required=True)
    hashed.add_argument("--admin", action="store_true")
    hashed.set_defaults(func=_hash)
    check = actions.add_parser("check", help="validate a keys file and summarize it")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_check)


def _new(args: argparse.Namespace) -> int:
    from cde_server.gateway.auth import generate_key, hash_key, key_entry_toml

    key = generate_key()
    try:
        entry = key_entry_toml(args.tenant, hash_key(key), admin=args.admin)
    except ValueError as exc:
        return _fail(exc)
    print(f"API key (shown once; give it to the client): {key}", file=sys.stderr)
    if args.append is not None:
        from cde_server.private_files import ensure_private_file, warn_if_shared

        ensure_private_file(args.append)  # a new keys file: 0600
        warn_if_shared(args.append, "the keys file")
        with args.append.open("a", encoding="utf-8") as file:
            file.write("\n" + entry)
        print(f"entry appended to {args.append}", file=sys.stderr)
        print(key)
    else:
        print(f"keys-file entry:\n{entry}", file=sys.stderr)
        print(key)
    return 0


def _hash(args: argparse.Namespace) -> int:
    from cde_server.gateway.auth import hash_key, key_entry_toml

    key = sys.stdin.readline().strip()
    if not key:
        return _fail(ValueError("no key on stdin"))
    try:
        sys.stdout.write(key_entry_toml(args.tenant, hash_key(key), admin=args.admin))
    except ValueError as exc:
        return _fail(exc)
    return 0


def _check(args: argparse.Namespace) -> int:
    from cde_server.gateway.auth import Authenticator, KeysFileError

    try:
        print(Authenticator.from_file(args.file).summary())
    except KeysFileError as exc:
        return _fail(exc)
    return 0


def _fail(exc: Exception) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"cde keys: error: {message}", file=sys.stderr)
    return 1
