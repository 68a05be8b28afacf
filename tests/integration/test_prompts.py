"""PromptRegistry: immutable built-ins and stored custom prompts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from cde_server.domain.prompts import BUILTIN_PROMPTS, DEFAULT_PROMPT, Prompt, PromptRegistry
from cde_server.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from cde_server.stores import Store, open_store

BUILTINS = ["query", "document", "classification", "clustering"]


def run_with_registry(
    url: str, body: Callable[[PromptRegistry, Store], Awaitable[None]], **limits: int
) -> None:
    async def main() -> None:
        store = await open_store(url)
        try:
            await body(PromptRegistry(store, **limits), store)
        finally:
            await store.close()

    asyncio.run(main())


def test_builtins_match_the_model_conventions() -> None:
    assert dict(BUILTIN_PROMPTS) == {
        "query": "search_query: ",
        "document": "search_document: ",
        "classification": "classification: ",
        "clustering": "clustering: ",
    }
    assert DEFAULT_PROMPT == "document"
    with pytest.raises(TypeError):
        BUILTIN_PROMPTS["query"] = "x"  # type: ignore[index]


def test_resolve(store_url: str) -> None:
    async def body(registry: PromptRegistry, store: Store) -> None:
        assert await registry.resolve("") == Prompt("document", "search_document: ", builtin=True)
        assert await registry.resolve("query") == Prompt("query", "search_query: ", builtin=True)
        with pytest.raises(NotFoundError, match='prompt "mine" not found; built-in prompts are'):
            await registry.resolve("mine")
        with pytest.raises(InvalidArgumentError, match="invalid prompt name"):
            await registry.resolve("no spaces")
        await registry.put("mine", "mine: ")
        mine = await registry.resolve("mine")
        assert mine == Prompt("mine", "mine: ", builtin=False)
        assert mine.apply("text") == "mine: text"

    run_with_registry(store_url, body)


def test_custom_prompts_are_seen_at_once_through_another_store(store_url: str) -> None:
    """No caching: a second gateway on the same store sees puts and deletes immediately."""

    async def body(registry: PromptRegistry, store: Store) -> None:
        other_store = await open_store(store_url)
        try:
            other = PromptRegistry(other_store)
            await registry.put("shared", "v1: ")
            assert (await other.resolve("shared")).text == "v1: "
            await registry.put("shared", "v2: ")
            assert (await other.resolve("shared")).text == "v2: "
            await registry.delete("shared")
            with pytest.raises(NotFoundError):
                await other.resolve("shared")
        finally:
            await other_store.close()

    run_with_registry(store_url, body)


def test_list_puts_builtins_first_then_custom_by_name(store_url: str) -> None:
    async def body(registry: PromptRegistry, store: Store) -> None:
        assert [p.name for p in await registry.list()] == BUILTINS
        for name in ["zz", "Aa", "mm"]:
            await registry.put(name, f"{name}: ")
        prompts = await registry.list()
        assert [p.name for p in prompts] == [*BUILTINS, "Aa", "mm", "zz"]
        assert [p.builtin for p in prompts] == [True] * 4 + [False] * 3
        assert prompts[-1].text == "zz: "

    run_with_registry(store_url, body)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_are_immutable(name: str) -> None:
    async def body(registry: PromptRegistry, store: Store) -> None:
        with pytest.raises(InvalidArgumentError, match="built in and cannot be changed"):
            await registry.put(name, "hijack: ")
        with pytest.raises(InvalidArgumentError, match="built in and cannot be deleted"):
            await registry.delete(name)
        assert (await registry.resolve(name)).text == BUILTIN_PROMPTS[name]
        assert await store.list_prompts() == {}

    run_with_registry("sqlite://:memory:", body)


def test_put_validates_name_and_size() -> None:
    async def body(registry: PromptRegistry, store: Store) -> None:
        with pytest.raises(InvalidArgumentError, match="invalid prompt name"):
            await registry.put("-bad", "x")
        assert (await registry.put("fits", "é" * 8)).text == "é" * 8  # 16 bytes: the limit
        with pytest.raises(InvalidArgumentError, match="17 bytes; the limit is 16"):
            await registry.put("big", "é" * 8 + "x")
        with pytest.raises(InvalidArgumentError, match="not valid UTF-8"):
            await registry.put("bad", "\udcff")
        assert (await registry.put("empty", "")).text == ""  # no prefix at all is allowed
        assert (await registry.resolve("empty")).apply("t") == "t"

    run_with_registry("sqlite://:memory:", body, max_text_bytes=16)


def test_custom_prompt_count_is_limited() -> None:
    async def body(registry: PromptRegistry, store: Store) -> None:
        await registry.put("a", "a")
        await registry.put("b", "b")
        with pytest.raises(ResourceExhaustedError, match="already 2 custom prompts"):
            await registry.put("c", "c")
        await registry.put("a", "replaced")  # replacing at the limit is fine
        await registry.delete("b")
        await registry.put("c", "c")

    run_with_registry("sqlite://:memory:", body, max_custom_prompts=2)


def test_delete_unknown_prompt_is_not_found() -> None:
    async def body(registry: PromptRegistry, store: Store) -> None:
        with pytest.raises(NotFoundError, match='prompt "ghost" not found'):
            await registry.delete("ghost")
        with pytest.raises(InvalidArgumentError):
            await registry.delete("")

    run_with_registry("sqlite://:memory:", body)
