"""Built-in prefix prompts (nomic-style task prefixes cde-small-v1 was trained with)."""

from __future__ import annotations

PROMPTS: dict[str, str] = {
    "query": "search_query: ",
    "document": "search_document: ",
    "classification": "classification: ",
    "clustering": "clustering: ",
}
DOCUMENT_PREFIX = PROMPTS["document"]  # also used for every context document
QUERY_PREFIX = PROMPTS["query"]


def prompt_prefix(name: str) -> str:
    """The prefix of a built-in prompt; an unknown name raises ValueError listing the valid ones."""
    try:
        return PROMPTS[name]
    except KeyError:
        raise ValueError(
            f"unknown prompt {name!r} (built-in prompts: {', '.join(PROMPTS)})"
        ) from None
