"""The client commands of `cde` end to end: context, prompt, embed, search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from cde_client import CdeClient
from cde_server.cli.main import main

if TYPE_CHECKING:
    from support.gateway_fixtures import GatewayThread

DOCUMENTS = [
    "The Nile is the longest river in Africa.",
    "Compilers translate source code into machine code.",
    "Violins have four strings tuned in fifths.",
    "Tides are caused by the gravity of the moon.",
    "Roses need sun and well-drained soil.",
]


def cde(capsys: pytest.CaptureFixture[str], address: str, *argv: str) -> tuple[int, str, str]:
    """Run `cde ARGV --address ADDRESS` in-process; (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = main([*argv, "--address", address])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def docs_txt(tmp_path: Path) -> Path:
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(DOCUMENTS) + "\n\n")
    return path


def test_context_commands(
    capsys: pytest.CaptureFixture[str], gateway: GatewayThread, docs_txt: Path, unique: str
) -> None:
    address = gateway.address
    status, out, _ = cde(capsys, address, "context", "create", unique, "--file", str(docs_txt))
    assert status == 0
    assert f"created {unique} revision 1: 5 documents" in out

    status, out, err = cde(capsys, address, "context", "create", unique, "--file", str(docs_txt))
    assert status == 1 and out == ""
    assert err.startswith("cde: error: ") and "ALREADY_EXISTS" in err
    assert len(err.strip().splitlines()) == 1

    jsonl = docs_txt.with_suffix(".jsonl")
    jsonl.write_text("\n".join(json.dumps({"text": d}) for d in DOCUMENTS[:3]) + "\n")
    status, out, err = cde(
        capsys, address, "context", "create", unique, "--file", str(jsonl), "--replace",
        "--progress",
    )  # fmt: skip
    assert status == 0, err
    assert f"created {unique} revision 2: 3 documents" in out
    assert "documents" in err or "doc" in err  # the progress display

    status, out, _ = cde(capsys, address, "context", "list")
    assert status == 0
    assert out.splitlines()[0].split()[:3] == ["NAME", "REVISION", "DOCUMENTS"]
    assert any(line.split()[:3] == [unique, "2", "3"] for line in out.splitlines())

    status, out, _ = cde(capsys, address, "context", "list", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert {"name": unique, "revision": 2}.items() <= next(
        r for r in records if r["name"] == unique
    ).items()

    status, out, _ = cde(capsys, address, "context", "show", unique, "--json", "--documents")
    assert status == 0
    shown = json.loads(out)
    assert shown["name"] == unique and shown["context_size"] == 16
    assert shown["sampling"] == "oversampled"
    assert set(shown["documents"]) <= set(DOCUMENTS[:3])

    status, out, _ = cde(capsys, address, "context", "show", unique)
    assert status == 0 and "revision" in out and unique in out

    status, out, _ = cde(capsys, address, "context", "delete", unique)
    assert status == 0 and f"deleted {unique}" in out
    status, out, err = cde(capsys, address, "context", "show", unique)
    assert status == 1 and "NOT_FOUND" in err


def test_prompt_commands(
    capsys: pytest.CaptureFixture[str], gateway: GatewayThread, unique: str
) -> None:
    address = gateway.address
    status, out, _ = cde(capsys, address, "prompt", "put", unique, "title: ")
    assert status == 0 and unique in out
    status, out, _ = cde(capsys, address, "prompt", "list")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "built-in" in lines["query"] and "custom" in lines[unique]
    status, out, _ = cde(capsys, address, "prompt", "list", "--json")
    prompts = {p["name"]: p for p in map(json.loads, out.splitlines())}
    assert prompts[unique] == {"name": unique, "text": "title: ", "builtin": False}
    status, out, _ = cde(capsys, address, "prompt", "delete", unique)
    assert status == 0
    status, _, err = cde(capsys, address, "prompt", "delete", unique)
    assert status == 1 and "NOT_FOUND" in err
    status, _, err = cde(capsys, address, "prompt", "put", "query", "x: ")
    assert status == 1 and "INVALID_ARGUMENT" in err


def test_embed_command(
    capsys: pytest.CaptureFixture[str], gateway: GatewayThread, tmp_path: Path
) -> None:
    with CdeClient(gateway.address) as client:
        expected = client.embed(["hello", "world"], prompt="query")
    status, out, _ = cde(capsys, gateway.address, "embed", "--prompt", "query", "hello", "world")
    assert status == 0
    payload = json.loads(out)
    assert payload["model_id"] == expected.model_id
    assert payload["token_counts"] == list(expected.token_counts)
    np.testing.assert_allclose(np.array(payload["embeddings"]), expected.embeddings, atol=1e-6)

    output = tmp_path / "out.npy"
    status, out, err = cde(
        capsys, gateway.address, "embed", "--prompt", "query", "hello", "world",
        "--output", str(output),
    )  # fmt: skip
    assert status == 0 and out == "" and "2x64" in err
    saved = np.load(output)
    assert saved.dtype == np.float32
    np.testing.assert_allclose(saved, expected.embeddings, atol=1e-6)


def test_search_command(
    capsys: pytest.CaptureFixture[str], gateway: GatewayThread, docs_txt: Path, unique: str
) -> None:
    queries = ["which river is longest?", "how many strings does a violin have?"]
    with CdeClient(gateway.address) as client:
        client.create_context_set(unique, DOCUMENTS)
        docs = client.embed_documents(DOCUMENTS, context=unique).embeddings
        best = np.argmax(client.embed_queries(queries, context=unique).embeddings @ docs.T, axis=1)
    status, out, _ = cde(
        capsys, gateway.address, "search", "--context", unique, "--docs", str(docs_txt),
        "--top-k", "2", *queries,
    )  # fmt: skip
    assert status == 0
    blocks = out.split("query: ")[1:]
    assert [block.splitlines()[0] for block in blocks] == queries
    for block, index in zip(blocks, best, strict=True):
        ranked = block.splitlines()[1:]
        assert len(ranked) == 2
        assert ranked[0].strip().startswith("1. ")
        assert ranked[0].endswith(DOCUMENTS[index])
        scores = [float(line.split()[1]) for line in ranked]
        assert scores == sorted(scores, reverse=True)


def test_unreachable_gateway_is_one_line_and_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cde(capsys, "127.0.0.1:1", "context", "list", "--timeout", "1")
    assert status == 1 and out == ""
    assert err.startswith("cde: error: ") and "UNAVAILABLE" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_input_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = cde(
        capsys, "127.0.0.1:1", "context", "create", "x", "--file", str(tmp_path / "missing.txt")
    )
    assert status == 1 and err.startswith("cde: error: ") and "missing.txt" in err


def test_address_from_the_environment(
    capsys: pytest.CaptureFixture[str], gateway: GatewayThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDE_ADDRESS", gateway.address)
    capsys.readouterr()
    assert main(["prompt", "list", "--json"]) == 0
    assert '"name": "query"' in capsys.readouterr().out


def test_console_script_help() -> None:
    for argv in (["--help"], ["context", "--help"], ["embed", "--help"], ["search", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "cde_server.cli.main", *argv],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert "usage: cde" in result.stdout
    top = subprocess.run(
        [sys.executable, "-m", "cde_server.cli.main", "--help"], capture_output=True, text=True
    ).stdout
    for command in ("context", "prompt", "embed", "search"):
        assert command in top


def test_context_revision_commands(
    capsys: pytest.CaptureFixture[str], gateway: GatewayThread, docs_txt: Path, unique: str
) -> None:
    address = gateway.address
    file = ["--file", str(docs_txt)]
    assert cde(capsys, address, "context", "create", unique, *file)[0] == 0
    status, out, err = cde(
        capsys, address, "context", "create", unique, *file, "--replace", "--no-activate"
    )
    assert status == 0, err
    assert f"created {unique} revision 2" in out and "not active (revision 1 is)" in out
    status, out, _ = cde(capsys, address, "context", "show", unique, "--json")
    shown = json.loads(out)
    assert shown["revision"] == 1 and shown["active_revision"] == 1
    assert [(r["revision"], r["active"]) for r in shown["revisions"]] == [(1, True), (2, False)]
    status, out, _ = cde(capsys, address, "context", "activate", unique, "2")
    assert status == 0 and f"activated {unique} revision 2" in out
    status, out, _ = cde(capsys, address, "context", "show", unique)
    assert status == 0 and "revisions:" in out
    status, _, err = cde(capsys, address, "context", "delete", f"{unique}@2")
    assert status == 1 and "FAILED_PRECONDITION" in err and "activate another first" in err
    assert cde(capsys, address, "context", "delete", f"{unique}@1")[0] == 0
    with CdeClient(address) as client:
        described = client.get_context_set(unique)
        assert described.active_revision == 2
        assert [r.revision for r in described.revisions] == [2]
        assert client.embed(["q"], context=f"{unique}@2").context_revision == 2
        assert client.activate_context_set(unique, 2).revision == 2
