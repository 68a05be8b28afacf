"""Random checkpoints in the published cde-small-v1 layout, for tests and benchmarks."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cde_model.checkpoint import head_shapes
from cde_model.config import NOMIC_BERT_2048
from cde_model.description import FIRST_STAGE, SECOND_STAGE
from cde_model.tokenizer import bundled_vocabulary_dir

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
WEIGHT_STD = 0.02  # small weights keep activations and outputs well-conditioned


@dataclass(frozen=True)
class CheckpointShape:
    """Backbone sizes of a random checkpoint."""

    hidden: int
    layers: int
    heads: int
    inner: int
    vocab: int
    corpus_size: int
    inline_backbone_config: bool  # write `embedder_config` (tiny) or rely on the defaults (full)


SHAPES: dict[str, CheckpointShape] = {
    "tiny": CheckpointShape(64, 2, 4, 256, 30528, 16, inline_backbone_config=True),
    "full": CheckpointShape(768, 12, 12, 3072, 30528, 512, inline_backbone_config=False),
}


def write_random_checkpoint(
    directory: Path,
    size: str | CheckpointShape = "tiny",
    seed: int = 0,
    std: float = WEIGHT_STD,
    family: str = "v1",
) -> Path:
    """Write config.json, model.safetensors and tokenizer files into `directory`.

    size: "tiny", "full" or (v1) any CheckpointShape; std: of the normal weight init;
    family: "v1" (cde-small-v1 layout) or "v2" (cde-small-v2 layout, see random_checkpoint_v2).
    """
    from safetensors.torch import save_file

    if family == "v2":
        from cde_model.random_checkpoint_v2 import write_random_v2_checkpoint

        if not isinstance(size, str):
            raise TypeError("a v2 checkpoint size is 'tiny', 'full' or a V2CheckpointShape")
        return write_random_v2_checkpoint(directory, size, seed=seed, std=std)
    if family != "v1":
        raise ValueError(f"unknown model family {family!r} (use v1 or v2)")

    if isinstance(size, str) and size not in SHAPES:
        raise ValueError(f"unknown checkpoint size {size!r} (use {', '.join(SHAPES)})")
    shape = SHAPES[size] if isinstance(size, str) else size
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = _random_tensors(shape, generator, std)
    weights_path = directory / "model.safetensors"
    save_file(tensors, str(weights_path), metadata={"format": "pt"})
    weights_path.chmod(0o644)  # safetensors creates it owner-only; checkpoints are shared
    config_text = json.dumps(_config(shape), indent=2) + "\n"
    (directory / "config.json").write_text(config_text, encoding="utf-8")
    for name in TOKENIZER_FILES:
        shutil.copyfile(bundled_vocabulary_dir() / name, directory / name)
    return directory


def _config(shape: CheckpointShape) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architecture": "transductive",
        "architectures": ["ContextualDocumentEmbeddingTransformer"],
        "embedder": NOMIC_BERT_2048,
        "transductive_corpus_size": shape.corpus_size,
        "transductive_tokens_per_document": 1,
        "transductive_tie_token_embeddings": False,
        "disable_dropout": True,
        "disable_transductive_rotary_embedding": True,
        "autoregressive_backbone": False,
        "embedding_output_dim": None,
        "limit_layers": None,
        "logit_scale": 50.0,
        "max_seq_length": 512,
    }
    if shape.inline_backbone_config:
        config["embedder_config"] = {
            "n_embd": shape.hidden,
            "n_head": shape.heads,
            "n_layer": shape.layers,
            "n_inner": shape.inner,
            "vocab_size": shape.vocab,
            "activation_function": "swiglu",
            "rotary_emb_base": 1000,
            "rotary_emb_fraction": 1.0,
            "layer_norm_epsilon": 1e-12,
            "prenorm": False,
            "type_vocab_size": 2,
        }
    return config


def _random_tensors(
    shape: CheckpointShape, generator: torch.Generator, std: float
) -> dict[str, torch.Tensor]:
    hidden, inner = shape.hidden, shape.inner

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator) * std

    def norm_pair(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": 1.0 + normal(hidden), f"{name}.bias": normal(hidden)}

    tensors: dict[str, torch.Tensor] = {}
    for prefix in (FIRST_STAGE, SECOND_STAGE):
        tensors[f"{prefix}.embeddings.word_embeddings.weight"] = normal(shape.vocab, hidden)
        tensors[f"{prefix}.embeddings.token_type_embeddings.weight"] = normal(2, hidden)
        tensors.update(norm_pair(f"{prefix}.emb_ln"))
        for i in range(shape.layers):
            layer = f"{prefix}.encoder.layers.{i}"
            tensors[f"{layer}.attn.Wqkv.weight"] = normal(3 * hidden, hidden)
            tensors[f"{layer}.attn.out_proj.weight"] = normal(hidden, hidden)
            tensors[f"{layer}.mlp.fc11.weight"] = normal(inner, hidden)
            tensors[f"{layer}.mlp.fc12.weight"] = normal(inner, hidden)
            tensors[f"{layer}.mlp.fc2.weight"] = normal(hidden, inner)
            tensors.update(norm_pair(f"{layer}.norm1"))
            tensors.update(norm_pair(f"{layer}.norm2"))
    for name, head_shape in head_shapes(hidden).items():
        tensors[name] = normal(*head_shape)
    return tensors
