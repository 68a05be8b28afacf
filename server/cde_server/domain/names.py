"""Validation of user-chosen names (context sets, prompts)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cde_server.errors import InvalidArgumentError

MAX_NAME_LENGTH = 64
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} characters of letters, digits, '.', '_' or '-', "
    "starting with a letter or digit"
)
_SHOWN_CHARS = 80  # long or hostile names are cut short in error messages


def is_valid_name(name: str) -> bool:
    """Whether `name` follows the naming rule."""
    return NAME_PATTERN.fullmatch(name) is not None


def validate_name(name: str, kind: str) -> str:
    """Return `name` if valid, else raise `InvalidArgumentError` naming the `kind` of thing."""
    if is_valid_name(name):
        return name
    if not name:
        raise InvalidArgumentError(f"{kind} name is empty; use {NAME_RULE}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(
            f"{kind} name is {len(name)} characters long (at most {MAX_NAME_LENGTH}); "
            f"use {NAME_RULE}"
        )
    shown = name if len(name) <= _SHOWN_CHARS else name[:_SHOWN_CHARS] + "..."
    raise InvalidArgumentError(f"invalid {kind} name {shown!r}: use {NAME_RULE}")


def validate_context_set_name(name: str) -> str:
    """Validate a context-set name."""
    return validate_name(name, "context set")


REVISION_SEPARATOR = "@"


@dataclass(frozen=True)
class ContextSetReference:
    """A context set as a request names it: `name` (the active revision) or `name@N`."""

    name: str
    revision: int | None = None

    def __str__(self) -> str:
        return (
            self.name
            if self.revision is None
            else f"{self.name}{REVISION_SEPARATOR}{self.revision}"
        )


def parse_context_set_reference(text: str) -> ContextSetReference:
    """`name` or `name@N` (N a positive integer), validated; `InvalidArgumentError` otherwise."""
    name, separator, number = text.partition(REVISION_SEPARATOR)
    validate_context_set_name(name)
    if not separator:
        return ContextSetReference(name)
    if not (number.isascii() and number.isdigit()) or int(number) < 1 or len(number) > 18:
        shown = number if len(number) <= _SHOWN_CHARS else number[:_SHOWN_CHARS] + "..."
        raise InvalidArgumentError(
            f"invalid context set revision {shown!r} in {name}@{shown}: use name@N with N a "
            "revision number (1, 2, ...), or name alone for the active revision"
        )
    return ContextSetReference(name, int(number))


def validate_prompt_name(name: str) -> str:
    """Validate a prompt name."""
    return validate_name(name, "prompt")
