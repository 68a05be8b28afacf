"""`cde encode` on the cde-small-v2 tiny checkpoint: golden.json reproduced (raw texts with
`--no-prompt`), the documents normalized by default, and the missing-tokenizer message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cde_server.cli.main import main
from support.paths import V2_TINY_CHECKPOINT
from support.v2_golden import (
    EMBED_CASES,
    GOLDEN,
    EmbedCase,
    assert_matches_golden,
    check_every_key_used,
    copy_without_tokenizer,
    normalized,
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def encode(tmp_path: Path, case: EmbedCase, *options: str) -> npt.NDArray[np.float32]:
    """`cde encode` of the case's texts on its context; the .npy it wrote."""
    texts = write_lines(tmp_path / "in.txt", GOLDEN[case.texts_key])
    context = write_lines(tmp_path / "ctx.txt", GOLDEN[case.context_key])
    output = tmp_path / "out.npy"
    prompt = ["--no-prompt"] if case.prompt == "" else ["--prompt", case.prompt]
    status = main(["encode", "--model", str(V2_TINY_CHECKPOINT), "--input-file", str(texts),
                   "--context-file", str(context), "--output", str(output), *prompt,
                   *options])  # fmt: skip
    assert status == 0
    embeddings: npt.NDArray[np.float32] = np.load(output)
    return embeddings


def test_golden_keys_are_all_covered() -> None:
    check_every_key_used()


@pytest.mark.parametrize("case", EMBED_CASES, ids=lambda case: case.embeddings_key)
def test_reproduces_golden_raw(tmp_path: Path, case: EmbedCase) -> None:
    assert_matches_golden(
        encode(tmp_path, case, "--no-normalize", "--batch-size", "3"),
        case.embeddings_key,
        "cde encode",
    )


def test_documents_normalized_by_default(tmp_path: Path) -> None:
    case = next(c for c in EMBED_CASES if c.embeddings_key == "document_embeddings")
    embeddings = encode(tmp_path, case)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, normalized(case.embeddings_key), atol=2e-5)


def test_snapshot_without_tokenizer_names_the_files_to_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDE_TOKENIZER", raising=False)
    snapshot = copy_without_tokenizer(tmp_path)
    texts = write_lines(tmp_path / "in.txt", ["x"])
    status = main(["encode", "--model", str(snapshot), "--input-file", str(texts),
                   "--output", str(tmp_path / "out.npy")])  # fmt: skip
    error = capsys.readouterr().err
    assert status == 1
    assert "answerdotai/ModernBERT-base" in error and "CDE_TOKENIZER" in error
    assert "tokenizer.json" in error
