"""Random checkpoints in the published cde-small-v2 layout, for tests and benchmarks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from cde_model.checkpoint import head_shapes
from cde_model.checkpoint_v2 import BackboneSizes, backbone_shapes
from cde_model.config_v2 import MODERNBERT_BASE, MODERNBERT_BASE_SETTINGS
from cde_model.context import default_context
from cde_model.demo_corpus import DEMO_CORPUS, DEMO_QUERIES
from cde_model.description import FIRST_STAGE, SECOND_STAGE
from cde_model.prompts import PROMPTS

WEIGHT_STD = 0.02  # small weights keep activations and outputs well-conditioned
TOKENIZER_VOCABULARY = 1000  # byte-level BPE entries, specials included
SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


@dataclass(frozen=True)
class V2CheckpointShape:
    """Backbone sizes of a random v2 checkpoint."""

    hidden: int
    layers: int
    heads: int
    inner: int
    vocab: int  # token-embedding rows
    corpus_size: int
    local_attention: int
    inline_backbone_config: bool  # write `embedder_config` (tiny) or rely on the defaults (full)


V2_SHAPES: dict[str, V2CheckpointShape] = {
    "tiny": V2CheckpointShape(64, 4, 4, 96, 2048, 16, 16, inline_backbone_config=True),
    "full": V2CheckpointShape(
        hidden=MODERNBERT_BASE_SETTINGS["hidden_size"],
        layers=MODERNBERT_BASE_SETTINGS["num_hidden_layers"],
        heads=MODERNBERT_BASE_SETTINGS["num_attention_heads"],
        inner=MODERNBERT_BASE_SETTINGS["intermediate_size"],
        vocab=MODERNBERT_BASE_SETTINGS["vocab_size"],
        corpus_size=512,
        local_attention=MODERNBERT_BASE_SETTINGS["local_attention"],
        inline_backbone_config=False,
    ),
}


def write_random_v2_checkpoint(
    directory: Path, size: str | V2CheckpointShape = "tiny", seed: int = 0, std: float = WEIGHT_STD
) -> Path:
    """Write config.json, model.safetensors and tokenizer files into `directory`.

    size: "tiny", "full" (the published shapes, no embedder_config) or any V2CheckpointShape.
    The tokenizer is a small byte-level BPE trained on built-in texts, with ModernBERT's
    special tokens and `[CLS] text [SEP]` template (ModernBERT-base's own is not bundled).
    """
    from safetensors.torch import save_file

    if isinstance(size, str) and size not in V2_SHAPES:
        raise ValueError(f"unknown checkpoint size {size!r} (use {', '.join(V2_SHAPES)})")
    shape = V2_SHAPES[size] if isinstance(size, str) else size
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weights_path = directory / "model.safetensors"
    save_file(_random_tensors(shape, generator, std), str(weights_path), metadata={"format": "pt"})
    weights_path.chmod(0o644)  # safetensors creates it owner-only; checkpoints are shared
    _write_json(directory / "config.json", _config(shape))
    write_v2_tokenizer(directory)
    return directory


def write_v2_tokenizer(directory: Path) -> Path:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCABULARY,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    queries = [query for query, _ in DEMO_QUERIES]
    texts = [*DEMO_CORPUS, *queries, *PROMPTS.values(), *default_context(512)]
    tokenizer.train_from_iterator(texts, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    specials = dict(zip(("unk", "cls", "sep", "pad", "mask"), SPECIAL_TOKENS, strict=True))
    special_map = {f"{name}_token": token for name, token in specials.items()}
    _write_json(directory / "special_tokens_map.json", special_map)
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 8192,
            "padding_side": "right",
            "truncation_side": "right",
            "model_input_names": ["input_ids", "attention_mask"],
            **special_map,
        },
    )
    return path


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _config(shape: V2CheckpointShape) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["ContextualDocumentEmbeddingTransformer"],
        "embedder": MODERNBERT_BASE,
        "autoregressive_backbone": False,
        "disable_transductive_rotary_embedding": True,
        "pool_ignore_contextual_tokens": True,
        "pool_ignore_instruction_tokens": True,
        "transductive_corpus_size": shape.corpus_size,
        "transductive_tokens_per_document": 1,
        "max_seq_length": 512,
        "logit_scale": 50.0,
        "limit_layers": None,
        "disable_dropout": True,
        "embedding_output_dim": None,
        "transductive_tie_token_embeddings": False,
        "torch_dtype": "float32",
    }
    if shape.inline_backbone_config:
        specials = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        config["embedder_config"] = {
            **MODERNBERT_BASE_SETTINGS,
            "vocab_size": shape.vocab,
            "hidden_size": shape.hidden,
            "intermediate_size": shape.inner,
            "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads,
            "local_attention": shape.local_attention,
            "pad_token_id": specials["[PAD]"],
            "bos_token_id": specials["[CLS]"],
            "cls_token_id": specials["[CLS]"],
            "eos_token_id": specials["[SEP]"],
            "sep_token_id": specials["[SEP]"],
            "model_type": "modernbert",
        }
    return config


def _random_tensors(
    shape: V2CheckpointShape, generator: torch.Generator, std: float
) -> dict[str, torch.Tensor]:
    hidden = shape.hidden
    sizes = BackboneSizes(shape.vocab, hidden, shape.inner, shape.layers)

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator) * std

    tensors: dict[str, torch.Tensor] = {}
    for prefix in (FIRST_STAGE, SECOND_STAGE):
        for name, tensor_shape in backbone_shapes(sizes).items():
            is_norm = len(tensor_shape) == 1  # every 1-D backbone tensor is a LayerNorm weight
            tensor = normal(*tensor_shape)
            tensors[f"{prefix}.{name}"] = tensor.add_(1.0) if is_norm else tensor
    for name, head_shape in head_shapes(hidden).items():
        tensors[name] = normal(*head_shape)
    return tensors
