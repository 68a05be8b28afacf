"""golden.json of the cde-small-v2 tiny fixture as cases every serving path must reproduce.

Each case says which texts are embedded with which prefix and conditioned on which context;
`GOLDEN_KEYS` maps every key of golden.json to where it is used, so a new key fails
`check_every_key_used` until a path checks it. `assert_matches_golden` prints the largest
difference it saw (run pytest with `-s` to read the numbers).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from support.paths import V2_GOLDEN_JSON, V2_TINY_CHECKPOINT

GOLDEN: dict[str, Any] = json.loads(V2_GOLDEN_JSON.read_text())
DOCUMENT_PREFIX: str = GOLDEN["document_prefix"]
QUERY_PREFIX: str = GOLDEN["query_prefix"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class ContextCase:
    """Stage 1: `texts_key` with the document prefix gives `embeddings_key`."""

    embeddings_key: str
    texts_key: str


@dataclass(frozen=True)
class EmbedCase:
    """Stage 2: `texts_key` with `prefix` on the context `context_key` gives `embeddings_key`."""

    embeddings_key: str
    texts_key: str
    context_key: str
    prompt: str  # built-in prompt name, or "" for no prefix at all

    @property
    def prefix(self) -> str:
        """The text prepended to every input."""
        return {"query": QUERY_PREFIX, "document": DOCUMENT_PREFIX, "": ""}[self.prompt]


CONTEXT_CASES = (
    ContextCase("dataset_embeddings", "context_texts"),
    ContextCase("alt_dataset_embeddings", "alt_context_texts"),
)
EMBED_CASES = (
    EmbedCase("query_embeddings", "queries", "context_texts", "query"),
    EmbedCase("document_embeddings", "documents", "context_texts", "document"),
    EmbedCase("alt_query_embeddings", "queries", "alt_context_texts", "query"),
    EmbedCase("raw_embeddings", "raw_texts", "context_texts", ""),
)
SETTINGS_KEYS = ("document_prefix", "query_prefix", "max_length", "pool_instruction_end_id")
UNCOMPARED_KEYS = ("about", "tolerance")


def check_every_key_used() -> None:
    """AssertionError naming golden.json keys no case, setting or exemption covers."""
    used = set(SETTINGS_KEYS) | set(UNCOMPARED_KEYS)
    for context_case in CONTEXT_CASES:
        used |= {context_case.embeddings_key, context_case.texts_key}
    for embed_case in EMBED_CASES:
        used |= {embed_case.embeddings_key, embed_case.texts_key, embed_case.context_key}
    assert set(GOLDEN) == used, f"unchecked golden.json keys: {sorted(set(GOLDEN) - used)}"


def assert_matches_golden(actual: npt.ArrayLike, key: str, path: str) -> float:
    """Within golden.json's tolerance (max abs difference, per-row cosine); the max difference."""
    got = np.asarray(actual, dtype=np.float64)
    wanted = np.asarray(GOLDEN[key], dtype=np.float64)
    assert got.shape == wanted.shape, f"{path} {key}: shape {got.shape} != {wanted.shape}"
    difference = float(np.abs(got - wanted).max())
    cosine = (got * wanted).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(wanted, axis=1)
    print(f"v2 golden via {path}: {key} max |diff| {difference:.2e}, min cos {cosine.min():.8f}")
    tolerance = GOLDEN["tolerance"]
    assert difference <= tolerance["max_abs"], f"{path} {key}: max |diff| {difference:.2e}"
    assert cosine.min() >= tolerance["min_cosine"], f"{path} {key}: cosine {cosine.min()}"
    return difference


def normalized(key: str) -> npt.NDArray[np.float64]:
    """The golden rows of `key`, L2-normalized (what a normalizing path returns)."""
    rows = np.asarray(GOLDEN[key], dtype=np.float64)
    norms: npt.NDArray[np.float64] = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / norms


def copy_without_tokenizer(target: Path) -> Path:
    """A copy of the v2 tiny checkpoint as the hub snapshot jxm/cde-small-v2 comes: config and
    weights, no tokenizer files. Same directory name, so the same model name and fingerprint
    once the fixture's tokenizer is supplied (CDE_TOKENIZER)."""
    directory = target / V2_TINY_CHECKPOINT.name
    directory.mkdir(parents=True)
    for source in V2_TINY_CHECKPOINT.iterdir():
        if source.name not in TOKENIZER_FILES and source.name != V2_GOLDEN_JSON.name:
            shutil.copyfile(source, directory / source.name)
    return directory
