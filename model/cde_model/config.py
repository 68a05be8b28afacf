"""The cde-small-v1 `config.json`: the fields that matter, defaults, and what we refuse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cde_model.family import read_config

NOMIC_BERT_2048 = "nomic-ai/nomic-bert-2048"

# embedder_config settings whose other values this implementation does not compute
# (nomic-bert-2048 has exactly these).
_REQUIRED_BACKBONE_SETTINGS: dict[str, Any] = {
    "activation_function": "swiglu",
    "prenorm": False,
    "causal": False,
    "qkv_proj_bias": False,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
}

# nomic-bert-2048 hyperparameters; the published config.json names the backbone by hub id only.
NOMIC_BERT_DEFAULTS: dict[str, Any] = {
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": 3072,
    "vocab_size": 30528,
    "rotary_emb_base": 1000,
    "layer_norm_epsilon": 1e-12,
    "type_vocab_size": 2,
    **_REQUIRED_BACKBONE_SETTINGS,
}


@dataclass(frozen=True)
class CDEConfig:
    """Settings read from config.json; tensor sizes come from the weights themselves.

    `embedding_output_dim` is accepted and ignored: the published transductive model builds its
    first-stage MLP with output size = hidden size whatever that field says.
    """

    corpus_size: int  # transductive_corpus_size: dataset-embedding rows in stage 2
    num_heads: int
    num_layers: int  # backbone layers in the checkpoint's architecture
    first_stage_layers: int  # after limit_layers_first_stage
    second_stage_layers: int  # after limit_layers
    rotary_base: float
    layer_norm_eps: float
    tie_token_embeddings: bool
    max_tokens: int

    @classmethod
    def from_file(cls, path: Path) -> CDEConfig:
        """Read and validate `config.json`."""
        return cls.from_dict(read_config(path), source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> CDEConfig:
        """Validate a parsed config dict; unsupported settings raise ValueError."""
        _refuse_unsupported(raw, source)
        embedder_config = raw.get("embedder_config")
        if embedder_config is None:
            backbone = dict(NOMIC_BERT_DEFAULTS)
        elif isinstance(embedder_config, dict):
            backbone = {**NOMIC_BERT_DEFAULTS, **embedder_config}
        else:
            raise ValueError(f"{source}: embedder_config must be an object")
        for key, required in _REQUIRED_BACKBONE_SETTINGS.items():
            if backbone.get(key) != required:
                raise ValueError(
                    f"{source}: unsupported embedder_config {key}={backbone.get(key)!r} "
                    f"(only {required!r} is supported)"
                )
        num_layers = positive_int(backbone["n_layer"], "embedder_config.n_layer", source)
        return cls(
            corpus_size=positive_int(
                raw.get("transductive_corpus_size", 512), "transductive_corpus_size", source
            ),
            num_heads=positive_int(backbone["n_head"], "embedder_config.n_head", source),
            num_layers=num_layers,
            first_stage_layers=_limited(
                num_layers, raw.get("limit_layers_first_stage"), "limit_layers_first_stage", source
            ),
            second_stage_layers=_limited(
                num_layers, raw.get("limit_layers"), "limit_layers", source
            ),
            rotary_base=float(backbone["rotary_emb_base"]),
            layer_norm_eps=float(backbone["layer_norm_epsilon"]),
            tie_token_embeddings=bool(raw.get("transductive_tie_token_embeddings", False)),
            max_tokens=positive_int(raw.get("max_seq_length", 512), "max_seq_length", source),
        )


def refuse_other_architectures(raw: dict[str, Any], source: str) -> None:
    """Both families: only the transductive architecture with one token per document."""
    architecture = raw.get("architecture", "transductive")
    if architecture != "transductive":
        raise ValueError(
            f"{source}: unsupported architecture {architecture!r} (only 'transductive')"
        )
    tokens_per_document = raw.get("transductive_tokens_per_document", 1)
    if tokens_per_document != 1:
        raise ValueError(
            f"{source}: transductive_tokens_per_document={tokens_per_document!r} is not "
            "supported (only 1)"
        )


def _refuse_unsupported(raw: dict[str, Any], source: str) -> None:
    refuse_other_architectures(raw, source)
    if raw.get("autoregressive_backbone", False):
        raise ValueError(f"{source}: autoregressive_backbone=true is not supported")
    if not raw.get("disable_transductive_rotary_embedding", True):
        raise ValueError(f"{source}: disable_transductive_rotary_embedding=false is not supported")
    embedder = raw.get("embedder", NOMIC_BERT_2048)
    dataset_backbone = raw.get("dataset_backbone") or embedder
    if dataset_backbone != embedder:
        raise ValueError(
            f"{source}: a dataset_backbone different from the embedder is not supported"
        )
    if embedder != NOMIC_BERT_2048 and "embedder_config" not in raw:
        raise ValueError(
            f"{source}: embedder {embedder!r} is not {NOMIC_BERT_2048} and no embedder_config "
            "gives its hyperparameters"
        )


def positive_int(value: Any, name: str, source: str) -> int:
    """`value` if it is a positive int (not a bool), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: {name} must be a positive integer, got {value!r}")
    return value


def _limited(num_layers: int, limit: Any, name: str, source: str) -> int:
    """Layers kept by a `limit_layers`-style setting (null or 0 keep all, as published)."""
    if limit is None or limit == 0:
        return num_layers
    return min(num_layers, positive_int(limit, name, source))
