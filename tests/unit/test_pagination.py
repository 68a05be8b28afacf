"""Page sizes and page tokens of ListContextSets."""

from __future__ import annotations

import base64

import pytest
from cde_server.domain.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    page_size,
)
from cde_server.errors import InvalidArgumentError


def test_page_size_rules() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE == 100
    assert page_size(1) == 1
    assert page_size(1000) == MAX_PAGE_SIZE == 1000
    assert page_size(10**9) == 1000
    with pytest.raises(InvalidArgumentError, match="page_size"):
        page_size(-1)


@pytest.mark.parametrize("name", ["a", "Z.z_z-9", "x" * 64])
def test_tokens_round_trip_and_are_opaque(name: str) -> None:
    token = encode_page_token(name)
    assert name not in token and "=" not in token
    assert decode_page_token(token) == name


def test_empty_token_is_the_first_page() -> None:
    assert decode_page_token("") is None


@pytest.mark.parametrize(
    "token",
    [
        "not base64 !!",
        "a",  # truncated base64
        base64.urlsafe_b64encode(b"v2:abc").decode(),  # unknown version
        base64.urlsafe_b64encode(b"abc").decode(),  # no version
        base64.urlsafe_b64encode(b"v1:bad name").decode(),  # not a valid name
        base64.urlsafe_b64encode(b"v1:").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
        "x" * 100_000,
    ],
)
def test_bad_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid page_token"):
        decode_page_token(token)
