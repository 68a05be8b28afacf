"""The ModernBERT backbone of both cde-small-v2 stages: transformers' `ModernBertModel` built
from checkpoint settings (it holds the weights; `modernbert_forward` runs them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import ModernBertConfig, ModernBertModel
from transformers.initialization import no_init_weights

from cde_model.checkpoint_v2 import BackboneSizes

SLIDING_ATTENTION = "sliding_attention"
_TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")


def modernbert_config(settings: Mapping[str, Any], sizes: BackboneSizes) -> ModernBertConfig:
    """ModernBertConfig from config settings, sizes from the weights, SDPA attention.

    Special-token ids outside the vocabulary (ModernBERT-base's, on a small checkpoint) are
    dropped: only the embedding's `padding_idx` reads them, and it must lie in range.
    """
    values = dict(settings)
    values.update(
        vocab_size=sizes.vocab,
        hidden_size=sizes.hidden,
        intermediate_size=sizes.inner,
        num_hidden_layers=sizes.layers,
    )
    for field in _TOKEN_ID_FIELDS:
        token_id = values.get(field)
        if not isinstance(token_id, int) or not 0 <= token_id < sizes.vocab:
            values[field] = None
    config = ModernBertConfig(**values)
    # The exact path: flash-attn (when installed) would run attention in bf16 on a GPU.
    config._attn_implementation = "sdpa"
    return config


def build_backbone(
    config: ModernBertConfig, state_dict: Mapping[str, torch.Tensor], device: torch.device
) -> ModernBertModel:
    """A ModernBertModel in eval mode holding `state_dict` (already on `device`, in its dtype).

    The weights are assigned, not copied, so the model takes their dtype; the rotary tables
    stay float32. Random initialization is skipped: every weight is replaced.
    """
    with no_init_weights():
        model = ModernBertModel(config)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    module: torch.nn.Module = model  # nn.Module's typed methods (transformers wraps `to`)
    module.to(device)
    module.eval()
    module.requires_grad_(False)
    return model
