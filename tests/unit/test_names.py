"""Naming rule for context sets and prompts."""

from __future__ import annotations

import pytest
from cde_server.domain.names import (
    is_valid_name,
    validate_context_set_name,
    validate_name,
    validate_prompt_name,
)
from cde_server.errors import InvalidArgumentError

VALID = ["a", "Z", "0", "abc", "A.b_c-d", "9lives", "x" * 64, "v1.2.3", "a..b", "a-"]
INVALID = [
    "",
    "-a",
    ".hidden",
    "_a",
    "x" * 65,
    "a b",
    "a/b",
    "a:b",
    "ünï",
    "a\n",
    "a\x00",
    "名前",
    " a",
    "a*",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)
    assert validate_context_set_name(name) == name
    assert validate_prompt_name(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(InvalidArgumentError, match="context set name"):
        validate_context_set_name(name)
    with pytest.raises(InvalidArgumentError, match="prompt name"):
        validate_prompt_name(name)


def test_messages_explain_the_rule() -> None:
    with pytest.raises(InvalidArgumentError) as empty:
        validate_name("", "context set")
    assert empty.value.message.startswith("context set name is empty")
    assert "1 to 64 characters" in empty.value.message
    with pytest.raises(InvalidArgumentError, match="is 65 characters long"):
        validate_name("a" * 65, "prompt")
    with pytest.raises(InvalidArgumentError, match=r"invalid prompt name 'a b': use 1 to 64"):
        validate_name("a b", "prompt")


def test_hostile_names_are_not_echoed_in_full() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        validate_name("é" * 10_000_000, "context set")
    assert len(raised.value.message) < 300
    with pytest.raises(InvalidArgumentError) as raised:
        validate_name("\x00" * 50, "context set")
    assert "\x00" not in raised.value.message  # repr escapes control characters
