"""Prefix prompts: immutable built-ins plus custom prompts kept in the store.

Nothing is cached: every lookup of a custom prompt reads the store, so a put or delete made
through any gateway sharing the store is seen at once. Built-ins never touch the store.
Changing or deleting a built-in is INVALID_ARGUMENT (the request can never succeed,
whatever the server's state).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cde_model.prompts import PROMPTS

from cde_server.domain.names import validate_prompt_name
from cde_server.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from cde_server.stores.base import Store

BUILTIN_PROMPTS: Mapping[str, str] = MappingProxyType(dict(PROMPTS))
"""The model package's built-in prompts (the prefixes the model was trained with), read-only."""
DEFAULT_PROMPT = "document"
"""The prompt used when a request names none (""): documents and context documents."""

DEFAULT_MAX_PROMPT_BYTES = 1024
DEFAULT_MAX_CUSTOM_PROMPTS = 1000


@dataclass(frozen=True)
class Prompt:
    """A named prefix prepended to every text it is used with."""

    name: str
    text: str
    builtin: bool

    def apply(self, text: str) -> str:
        """`text` with this prompt's prefix."""
        return self.text + text


class PromptRegistry:
    """Built-in and custom prompts over a `Store`."""

    def __init__(
        self,
        store: Store,
        *,
        max_text_bytes: int = DEFAULT_MAX_PROMPT_BYTES,
        max_custom_prompts: int = DEFAULT_MAX_CUSTOM_PROMPTS,
    ) -> None:
        """`max_text_bytes` bounds a prompt's UTF-8 size; `max_custom_prompts` their count."""
        self._store = store
        self.max_text_bytes = max_text_bytes
        self.max_custom_prompts = max_custom_prompts

    async def resolve(self, name: str) -> Prompt:
        """The prompt called `name` ("" → "document"); `NotFoundError` if unknown."""
        name = name or DEFAULT_PROMPT
        builtin = BUILTIN_PROMPTS.get(name)
        if builtin is not None:
            return Prompt(name, builtin, builtin=True)
        validate_prompt_name(name)
        try:
            text = await self._store.get_prompt(name)
        except NotFoundError:
            raise NotFoundError(
                f'prompt "{name}" not found; built-in prompts are {", ".join(BUILTIN_PROMPTS)}'
            ) from None
        return Prompt(name, text, builtin=False)

    async def list(self) -> list[Prompt]:
        """Built-ins first (in their fixed order), then custom prompts by name."""
        custom = await self._store.list_prompts()
        return [Prompt(name, text, builtin=True) for name, text in BUILTIN_PROMPTS.items()] + [
            Prompt(name, custom[name], builtin=False) for name in sorted(custom)
        ]

    async def put(self, name: str, text: str) -> Prompt:
        """Create or replace a custom prompt; returns it as stored."""
        validate_prompt_name(name)
        self._refuse_builtin(name, "changed")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgumentError(f'prompt "{name}" text is not valid UTF-8') from None
        if size > self.max_text_bytes:
            raise InvalidArgumentError(
                f'prompt "{name}" text is {size} bytes; the limit is {self.max_text_bytes}'
            )
        existing = await self._store.list_prompts()
        if name not in existing and len(existing) >= self.max_custom_prompts:
            raise ResourceExhaustedError(
                f"there are already {len(existing)} custom prompts (the limit); delete one first"
            )
        await self._store.put_prompt(name, text)
        return Prompt(name, text, builtin=False)

    async def delete(self, name: str) -> None:
        """Delete a custom prompt; `NotFoundError` if there is none of that name."""
        validate_prompt_name(name)
        self._refuse_builtin(name, "deleted")
        await self._store.delete_prompt(name)

    @staticmethod
    def _refuse_builtin(name: str, action: str) -> None:
        if name in BUILTIN_PROMPTS:
            raise InvalidArgumentError(
                f'prompt "{name}" is built in and cannot be {action}; use another name'
            )
