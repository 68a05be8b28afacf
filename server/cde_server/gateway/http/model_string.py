"""The `model` string of /v1/embeddings: `<target>[@<revision>][:<prompt>]`.

`target` is a context set name or the served model's name (the built-in default context);
`revision` a decimal number; `prompt` a prompt name (none: the document prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

from cde_server.errors import NotFoundError


@dataclass(frozen=True)
class ModelSelection:
    """What a model string selects."""

    target: str
    revision: int | None = None
    prompt: str = ""


def parse_model_string(model: str) -> ModelSelection:
    """Split a model string; NOT_FOUND (OpenAI's answer for an unknown model) when malformed."""
    rest, _, prompt = model.partition(":")
    target, at, revision_text = rest.partition("@")
    if not target or (at and not (revision_text.isascii() and revision_text.isdigit())):
        raise NotFoundError(
            f"model {model[:200]!r} not found; use <context set or served model>"
            "[@<revision>][:<prompt>], e.g. docs:query"
        )
    revision = int(revision_text) if at else None
    return ModelSelection(target=target, revision=revision, prompt=prompt)
