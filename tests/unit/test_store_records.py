"""The compact stored form of a revision, quota decisions and create fingerprints (no processes)."""

from __future__ import annotations

import numpy as np
import pytest
from cde_server.domain.context_sets import request_fingerprint, validate_idempotency_key
from cde_server.errors import InvalidArgumentError
from cde_server.stores.base import (
    QuotaExceededError,
    StoreQuota,
    StoreUsage,
    check_quota,
    namespace_of,
)
from cde_server.stores.records import compact


def test_compact_keeps_each_distinct_row_and_document_once_and_rebuilds_exactly() -> None:
    rng = np.random.default_rng(1)
    distinct = rng.standard_normal((3, 16)).astype(np.float32)
    order = [0, 1, 2, 0, 0, 1, 2, 2, 1, 0] * 50
    embeddings, documents = distinct[order], tuple(f"doc {i}" for i in order)
    stored = compact(embeddings, documents)
    assert len(stored.embeddings) == 3 * 16 * 4
    assert stored.documents == '["doc 0", "doc 1", "doc 2"]'
    assert stored.stored_bytes == 3 * 16 * 4 + len(stored.documents) + 4 * 2 * len(order)
    rows, docs = stored.materialize(len(order), 16, with_documents=True)
    assert rows.tobytes() == embeddings.tobytes() and docs == documents
    lean, none = stored.materialize(len(order), 16, with_documents=False)
    assert lean.tobytes() == embeddings.tobytes() and none == ()


def test_compact_is_exact_for_any_rows_and_documents() -> None:
    rows = np.array([[0.0, -0.0], [0.0, 0.0], [np.nan, 1.0], [np.nan, 1.0]], dtype=np.float32)
    documents = ("a", "a", "", "ü")  # equal documents with different rows, and the reverse
    stored = compact(rows, documents)
    back, docs = stored.materialize(4, 2, with_documents=True)
    assert back.tobytes() == rows.tobytes() and docs == documents
    fewer = compact(rows, ("x",))  # a document count other than the row count survives too
    assert fewer.materialize(4, 2, with_documents=True)[1] == ("x",)


def test_materialize_refuses_corrupt_payloads() -> None:
    stored = compact(np.ones((4, 2), dtype=np.float32), ("a",) * 4)
    with pytest.raises(ValueError):
        stored.materialize(4, 3, with_documents=False)
    with pytest.raises(ValueError):
        stored.materialize(9, 2, with_documents=False)


def test_quota_refuses_growth_past_a_limit_only() -> None:
    quota = StoreQuota(max_context_sets=2, max_stored_bytes=100)
    check_quota(quota, StoreUsage(1, 50), StoreUsage(2, 100))  # at the limit: fine
    check_quota(quota, StoreUsage(3, 500), StoreUsage(3, 400))  # over, but shrinking: fine
    check_quota(None, StoreUsage(0, 0), StoreUsage(10**6, 10**12))
    with pytest.raises(QuotaExceededError, match="has 2 context sets and its limit is 2") as sets:
        check_quota(quota, StoreUsage(2, 10), StoreUsage(3, 20))
    assert sets.value.quota == "context_sets" and sets.value.code == "RESOURCE_EXHAUSTED"
    with pytest.raises(QuotaExceededError, match="use 90 bytes and the new revision needs 20"):
        check_quota(quota, StoreUsage(1, 90), StoreUsage(1, 110))
    check_quota(StoreQuota(), StoreUsage(0, 0), StoreUsage(10**6, 10**12))  # 0: no limit


def test_namespace_of_a_stored_name() -> None:
    assert namespace_of("acme/docs") == "acme" and namespace_of("docs") == ""


def _fingerprint(documents: list[str], seed: int = 42) -> str:
    return request_fingerprint(
        prompt="document", seed=seed, replace=False, activate=True, documents=documents
    )


def test_request_fingerprint_covers_options_and_documents() -> None:
    same = _fingerprint(["a", "bc"])
    assert same == _fingerprint(["a", "bc"])
    assert same != _fingerprint(["ab", "c"])
    assert same != _fingerprint(["a", "bc"], seed=1)


def test_idempotency_keys_are_printable_ascii() -> None:
    assert validate_idempotency_key("") == ""
    assert validate_idempotency_key("a" * 128) == "a" * 128
    for bad in ("a b", "é", "a" * 129, "tab\t"):
        with pytest.raises(InvalidArgumentError, match="invalid idempotency key"):
            validate_idempotency_key(bad)
