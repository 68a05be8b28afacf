"""The cde-small-v2 `config.json`: the fields that matter, defaults, and what we refuse (no torch).

The published config names its backbone by hub id only; the ModernBERT-base hyperparameters
below stand in for it unless the checkpoint carries `embedder_config` (ModernBertConfig names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cde_model.config import positive_int, refuse_other_architectures
from cde_model.family import read_config

MODERNBERT_BASE = "answerdotai/ModernBERT-base"
MAX_TOKENS = 512  # the published code's tokenizer call; neither config nor tokenizer sets it

# answerdotai/ModernBERT-base, as transformers' ModernBertConfig names them.
MODERNBERT_BASE_SETTINGS: dict[str, Any] = {
    "vocab_size": 50368,
    "hidden_size": 768,
    "intermediate_size": 1152,
    "num_hidden_layers": 22,
    "num_attention_heads": 12,
    "hidden_activation": "gelu",
    "max_position_embeddings": 8192,
    "norm_eps": 1e-5,
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
    "local_attention": 128,
    "global_attn_every_n_layers": 3,
    "attention_dropout": 0.0,
    "embedding_dropout": 0.0,
    "mlp_dropout": 0.0,
    "pad_token_id": 50283,
    "bos_token_id": 50281,
    "cls_token_id": 50281,
    "eos_token_id": 50282,
    "sep_token_id": 50282,
}

# embedder_config settings whose other values the published checkpoints do not use and the
# weight layout checked at load time does not describe.
_REQUIRED_BACKBONE_SETTINGS: dict[str, Any] = {
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_activation": "gelu",
}

# Settings that must keep their published value (None = absent or null).
_REFUSED_UNLESS: dict[str, Any] = {
    "autoregressive_backbone": False,
    "transductive_tie_token_embeddings": False,
    "limit_layers": None,
    "limit_layers_first_stage": None,
    "pool_ignore_contextual_tokens": True,
}


@dataclass(frozen=True)
class CDEV2Config:
    """Settings read from a v2 config.json (tensor sizes are checked against the weights)."""

    corpus_size: int  # transductive_corpus_size: N dataset rows used by stage 2
    pool_ignore_instruction_tokens: bool  # drop [CLS] .. the first ":" from the stage-2 pool
    backbone: dict[str, Any]  # ModernBertConfig keyword arguments (without model_type)
    max_tokens: int = MAX_TOKENS

    @property
    def num_layers(self) -> int:
        return int(self.backbone["num_hidden_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.backbone["num_attention_heads"])

    @classmethod
    def from_file(cls, path: Path) -> CDEV2Config:
        """Read and validate `config.json`."""
        return cls.from_dict(read_config(path), source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> CDEV2Config:
        """Validate a parsed v2 config dict; unsupported settings raise ValueError."""
        _refuse_unsupported(raw, source)
        embedder_config = raw.get("embedder_config")
        if embedder_config is None:
            backbone = dict(MODERNBERT_BASE_SETTINGS)
        elif isinstance(embedder_config, dict):
            model_type = embedder_config.get("model_type", "modernbert")
            if model_type != "modernbert":
                raise ValueError(
                    f"{source}: embedder_config.model_type {model_type!r} is not modernbert"
                )
            backbone = {
                **MODERNBERT_BASE_SETTINGS,
                **{k: v for k, v in embedder_config.items() if k != "model_type"},
            }
        else:
            raise ValueError(f"{source}: embedder_config must be an object")
        for key, required in _REQUIRED_BACKBONE_SETTINGS.items():
            if backbone.get(key) != required:
                raise ValueError(
                    f"{source}: unsupported embedder_config {key}={backbone.get(key)!r} "
                    f"(only {required!r} is supported)"
                )
        for key in ("num_hidden_layers", "num_attention_heads", "local_attention"):
            positive_int(backbone.get(key), f"embedder_config.{key}", source)
        positive_int(
            backbone.get("global_attn_every_n_layers"), "global_attn_every_n_layers", source
        )
        return cls(
            corpus_size=positive_int(
                raw.get("transductive_corpus_size", 512), "transductive_corpus_size", source
            ),
            pool_ignore_instruction_tokens=bool(raw.get("pool_ignore_instruction_tokens", False)),
            backbone=backbone,
        )


def _refuse_unsupported(raw: dict[str, Any], source: str) -> None:
    refuse_other_architectures(raw, source)
    for key, allowed in _REFUSED_UNLESS.items():
        value = raw.get(key, allowed)
        if value != allowed:
            shown = "null" if allowed is None else str(allowed).lower()
            raise ValueError(
                f"{source}: {key}={value!r} is not supported for cde-small-v2 (only {shown})"
            )
    embedder = raw.get("embedder", MODERNBERT_BASE)
    dataset_backbone = raw.get("dataset_backbone") or embedder
    if dataset_backbone != embedder:
        raise ValueError(
            f"{source}: a dataset_backbone different from the embedder is not supported"
        )
