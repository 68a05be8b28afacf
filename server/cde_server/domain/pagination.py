"""Paging through context sets: page sizes and opaque page tokens.

A token is the URL-safe base64 (unpadded) of "v1:" + the last name of the previous page.
It is not tied to a snapshot: sets created or deleted between pages are seen or skipped
according to their names, never duplicated.
"""

from __future__ import annotations

import base64
import binascii

from cde_server.domain.names import is_valid_name
from cde_server.errors import InvalidArgumentError
from cde_server.stores.base import NAMESPACE_SEPARATOR, ContextSetSummary, Store

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_VERSION = "v1:"


def page_size(requested: int) -> int:
    """0 → the default; larger than the maximum → the maximum; negative → InvalidArgument."""
    if requested < 0:
        raise InvalidArgumentError(f"page_size must not be negative, got {requested}")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_page_token(last_name: str) -> str:
    """Opaque token that continues after `last_name`."""
    raw = (_TOKEN_VERSION + last_name).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> str | None:
    """The name to continue after ("" → None, the first page); bad token → InvalidArgument."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    name = raw.removeprefix(_TOKEN_VERSION)
    parts = name.split(NAMESPACE_SEPARATOR, 1)  # "tenant/name" when listing all tenants
    if not raw.startswith(_TOKEN_VERSION) or not all(is_valid_name(part) for part in parts):
        raise InvalidArgumentError("invalid page_token; pass the next_page_token of a listing")
    return name


async def list_page(
    store: Store, *, requested_size: int, page_token: str
) -> tuple[list[ContextSetSummary], str]:
    """One page of summaries and the next page token ("" when this is the last page)."""
    size = page_size(requested_size)
    after = decode_page_token(page_token)
    summaries = await store.list_context_sets(after=after, limit=size + 1)
    if len(summaries) <= size:
        return summaries, ""
    page = summaries[:size]
    return page, encode_page_token(page[-1].name)
