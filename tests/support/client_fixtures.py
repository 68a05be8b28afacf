"""Pytest plugin: `cde_client` clients on the real gateway (tests/gateway_fixtures.py).

Fixtures:
- `client`: a `CdeClient` on the session's gateway;
- `unique`: a name prefix unique to the test (the session gateway's store is shared);
- `small_gateway`: a gateway whose request limits are tiny, so inputs get split.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from cde_client import CdeClient

if TYPE_CHECKING:
    from support.gateway_fixtures import GatewayFactory, GatewayThread

T = TypeVar("T")
SMALL_MAX_TEXTS = 3
_counter = itertools.count()


@pytest.fixture
def client(gateway: GatewayThread) -> Iterator[CdeClient]:
    """A sync client on the session's gateway."""
    with CdeClient(gateway.address) as sync_client:
        yield sync_client


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A context-set/prompt name prefix no other test uses (names: [A-Za-z0-9._-], <= 64)."""
    test_name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:30].strip("-")
    return f"t{os.getpid()}-{next(_counter)}-{test_name}"


@pytest.fixture
def small_gateway(gateway_factory: GatewayFactory) -> GatewayThread:
    """A gateway accepting at most SMALL_MAX_TEXTS texts per Embed request."""
    return gateway_factory(max_texts_per_request=SMALL_MAX_TEXTS)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop (no pytest-asyncio needed)."""
    return asyncio.run(coroutine)
