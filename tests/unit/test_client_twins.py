"""The sync and async clients are twins: same methods, same signatures, generated, not copied."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from cde_client import AsyncCdeClient, CdeClient, _operations, _twins

ASYNC_SPELLINGS = {
    "AsyncIterator": "Iterator",
    "Iterable[str] | AsyncIterable[str]": "Iterable[str]",
    "Iterable[Sequence[str]] | AsyncIterable[Sequence[str]]": "Iterable[Sequence[str]]",
}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def as_sync(signature: inspect.Signature) -> str:
    text = str(signature)
    for async_spelling, sync_spelling in ASYNC_SPELLINGS.items():
        text = text.replace(async_spelling, sync_spelling)
    return text


def test_generated_methods_are_up_to_date() -> None:
    assert _twins.stale_files() == [], "run: python -m cde_client._twins"


def test_both_clients_expose_the_same_methods_and_signatures() -> None:
    sync_methods = public_methods(CdeClient)
    async_methods = public_methods(AsyncCdeClient)
    assert set(sync_methods) == set(async_methods)
    assert set(_operations.PUBLIC) <= set(sync_methods)
    for name, sync_method in sync_methods.items():
        async_method = async_methods[name]
        assert as_sync(inspect.signature(async_method)) == str(inspect.signature(sync_method)), name
        assert inspect.getdoc(async_method) == inspect.getdoc(sync_method), name


def test_async_methods_are_coroutines_or_async_iterators() -> None:
    for name, method in public_methods(AsyncCdeClient).items():
        returns = str(inspect.signature(method).return_annotation)
        if returns.startswith("AsyncIterator"):
            assert not inspect.iscoroutinefunction(method), name
        else:
            assert inspect.iscoroutinefunction(method), name
    for name, method in public_methods(CdeClient).items():
        assert not inspect.iscoroutinefunction(method), name


def test_client_context_managers() -> None:
    assert hasattr(CdeClient, "__enter__") and hasattr(CdeClient, "__exit__")
    assert hasattr(AsyncCdeClient, "__aenter__") and hasattr(AsyncCdeClient, "__aexit__")
    with CdeClient("127.0.0.1:1") as client:
        assert repr(client) == "CdeClient('127.0.0.1:1')"


def test_every_operation_documents_itself() -> None:
    for name in _operations.PUBLIC:
        assert inspect.getdoc(getattr(_operations, name)), name
