"""Context-set rules that need no backend: sampling, limits, records, compatibility."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest
from cde_server.domain.context_sets import (
    DocumentCollector,
    build_context_set,
    is_compatible,
    require_compatible,
    sample_documents,
    sampling_of,
)
from cde_server.errors import FailedPreconditionError, InvalidArgumentError
from cde_server.triton.protocol import context_id

DOCS = [f"document {i}" for i in range(40)]


def test_sampling_labels() -> None:
    assert sampling_of(16, 16) == "exact"
    assert sampling_of(17, 16) == "subsampled"
    assert sampling_of(1, 16) == "oversampled"


def test_exact_keeps_documents_in_order() -> None:
    assert sample_documents(DOCS[:16], 16) == (DOCS[:16], "exact")


def test_subsample_is_seeded_without_replacement() -> None:
    chosen, sampling = sample_documents(DOCS, 16, seed=42)
    assert sampling == "subsampled" and len(chosen) == 16
    assert len(set(chosen)) == 16 and set(chosen) <= set(DOCS)
    assert sample_documents(DOCS, 16, seed=42)[0] == chosen  # deterministic
    assert sample_documents(DOCS, 16, seed=7)[0] != chosen


def test_oversample_uses_every_document() -> None:
    chosen, sampling = sample_documents(DOCS[:3], 8)
    assert sampling == "oversampled" and len(chosen) == 8
    assert set(chosen) == set(DOCS[:3])
    assert chosen == sample_documents(DOCS[:3], 8)[0]
    assert sample_documents(["only"], 4) == (["only"] * 4, "oversampled")


def test_no_documents_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match="at least one document"):
        sample_documents([], 16)


def test_collector_enforces_limits() -> None:
    collector = DocumentCollector(max_documents=5, max_document_bytes=4, max_total_bytes=1000)
    collector.add(["a", "bb"])
    collector.add([])
    collector.add(["éé", ""])  # 4 bytes fits; empty documents are allowed
    assert collector.documents == ["a", "bb", "éé", ""]
    with pytest.raises(InvalidArgumentError, match="context document 4 is 5 bytes; the limit is 4"):
        collector.add(["abcde"])
    with pytest.raises(InvalidArgumentError, match="context document 4 is not valid UTF-8"):
        collector.add(["\udcff"])
    collector.add(["e"])
    with pytest.raises(InvalidArgumentError, match="more than 5 context documents"):
        collector.add(["f"])
    assert sample_documents(collector.documents, 3, seed=1)[1] == "subsampled"


def test_document_collector_total_bytes() -> None:
    collector = DocumentCollector(max_documents=100, max_document_bytes=4, max_total_bytes=7)
    collector.add(["abcd", "é"])  # 6 bytes
    assert collector.total_bytes == 6
    with pytest.raises(
        InvalidArgumentError, match="exceed the limit of 7 bytes in total at document 2"
    ):
        collector.add(["xy"])
    collector.add(["z"])  # the refused document was not kept: exactly 7 bytes now
    assert collector.documents == ["abcd", "é", "z"] and collector.total_bytes == 7


def test_build_context_set_computes_the_content_hash() -> None:
    embeddings = np.arange(12, dtype=np.float64).reshape(4, 3)  # converted to float32
    created = datetime(2024, 1, 1, tzinfo=UTC)
    record = build_context_set(
        name="my-set",
        prompt="document",
        documents=["a", "b", "c", "a"],
        embeddings=embeddings,
        source_document_count=3,
        sampling="oversampled",
        model_fingerprint="fp",
        created_at=created,
    )
    assert record.embeddings.dtype == np.float32
    assert not record.embeddings.flags.writeable
    assert record.context_id == context_id(embeddings.astype(np.float32))
    assert len(record.context_id) == 32
    assert record.documents == ("a", "b", "c", "a")
    assert (record.revision, record.created_at, record.context_size) == (0, created, 4)
    embeddings[0, 0] = 99  # the record owns its copy
    assert record.embeddings[0, 0] == 0
    summary = record.summary()
    assert summary.embedding_dim == 3 and summary.sampling == "oversampled"


def test_build_context_set_checks_its_input() -> None:
    def build(**overrides: object) -> None:
        arguments: dict[str, object] = {
            "name": "ok",
            "prompt": "document",
            "documents": ["a", "b"],
            "embeddings": np.zeros((2, 3), dtype=np.float32),
            "source_document_count": 2,
            "sampling": "exact",
            "model_fingerprint": "fp",
        }
        build_context_set(**{**arguments, **overrides})  # type: ignore[arg-type]

    build()
    with pytest.raises(InvalidArgumentError, match="invalid context set name"):
        build(name="bad name")
    with pytest.raises(ValueError, match="one embedding row per document"):
        build(embeddings=np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="one embedding row per document"):
        build(embeddings=np.zeros(6, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        build(embeddings=np.array([[0, 0, np.nan], [0, 0, 0]]))
    with pytest.raises(ValueError, match="sampling"):
        build(sampling="random")


def test_compatibility_with_the_served_model() -> None:
    record = build_context_set(
        name="old",
        prompt="document",
        documents=["a"],
        embeddings=np.ones((1, 2)),
        source_document_count=1,
        sampling="exact",
        model_fingerprint="a" * 64,
    )
    assert is_compatible(record, "a" * 64)
    require_compatible(record.summary(), "a" * 64)
    assert not is_compatible(record.summary(), "b" * 64)
    with pytest.raises(FailedPreconditionError) as raised:
        require_compatible(record, "b" * 64)
    assert raised.value.message == (
        'context set "old" was built with model aaaaaaaaaaaa, but this server runs model '
        "bbbbbbbbbbbb; rebuild it with replace"
    )


def test_domain_modules_do_not_import_torch() -> None:
    code = (
        "import sys, cde_server.domain.context_sets, cde_server.domain.prompts, "
        "cde_server.domain.pagination, "
        "cde_server.stores.sqlite, cde_server.stores.redis; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
