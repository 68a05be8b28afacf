"""The cde-small-v2 tokenizer: ModernBERT-base's `tokenizer.json`, found beside the checkpoint
or in `$CDE_TOKENIZER`, and the instruction end id derived from it."""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer

from cde_model.tokenizer import TextTokenizer

TOKENIZER_ENV = "CDE_TOKENIZER"  # a directory holding ModernBERT-base's tokenizer files
TOKENIZER_SOURCE = "answerdotai/ModernBERT-base"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
INSTRUCTION_END = ": "  # prompts end in it; its first token (the bare ":") ends the instruction


def v2_tokenizer_file(directory: Path, tokenizer_dir: str | Path | None = None) -> Path:
    """`tokenizer.json` of the checkpoint directory, else of `tokenizer_dir` (default
    `$CDE_TOKENIZER`); else a FileNotFoundError that says which files to copy from where."""
    candidates = [directory / "tokenizer.json"]
    override = tokenizer_dir if tokenizer_dir is not None else os.environ.get(TOKENIZER_ENV)
    if override:
        candidates.append(Path(override) / "tokenizer.json")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c.parent) for c in candidates)
    raise FileNotFoundError(
        f"no tokenizer.json in {looked}: cde-small-v2 checkpoints (the jxm/cde-small-v2 hub "
        f"snapshot) ship no tokenizer. Copy {', '.join(TOKENIZER_FILES)} from the Hugging Face "
        f"hub repo {TOKENIZER_SOURCE} into {directory}, or set {TOKENIZER_ENV} to a directory "
        "holding them"
    )


def load_v2_tokenizer(directory: Path, max_tokens: int) -> tuple[TextTokenizer, Path]:
    """The v2 tokenizer (right padding, truncation to `max_tokens`) and the file it came from."""
    path = v2_tokenizer_file(directory)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception type for malformed files
        raise ValueError(f"{path} is not a readable tokenizer.json: {exc}") from exc
    return TextTokenizer(tokenizer, max_tokens), path


def instruction_end_id(tokenizer: TextTokenizer) -> int:
    """The first token id of `": "`: positions up to its first occurrence form the prompt."""
    ids = tokenizer.token_ids(INSTRUCTION_END)
    if not ids:
        raise ValueError(f"the tokenizer encodes {INSTRUCTION_END!r} to no tokens")
    return ids[0]
