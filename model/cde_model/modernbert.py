"""The ModernBERT backbone of both cde-small-v2 stages: transformers' `ModernBertModel` built
from checkpoint settings, and the attention masks it runs with.

The masks are built here rather than by transformers: the N + 8 context and prompt rows of
stage 2 are never padding, and masked scores get a finite minimum so that a padding row whose
local window holds only padding stays finite (an all-masked softmax row would be NaN).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import ModernBertConfig, ModernBertModel
from transformers.initialization import no_init_weights

from cde_model.checkpoint_v2 import BackboneSizes

FULL_ATTENTION = "full_attention"
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


def attention_masks(
    valid: torch.Tensor | None,
    rows: int,
    half_window: int,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor | None]:
    """Additive masks for both layer types, keyed as ModernBertModel's layers look them up.

    valid: bool [B, rows], False for padding keys (None: no padding). Global layers see every
    valid key; local layers only keys within `half_window` positions of the query.
    """
    minimum = torch.finfo(dtype).min
    positions = torch.arange(rows, device=device)
    band = (positions[:, None] - positions[None, :]).abs() <= half_window  # [rows, rows]
    if valid is None:
        full = None
        sliding_visible = band[None, None]
    else:
        full_visible = valid[:, None, None, :]
        full = torch.zeros(full_visible.shape, dtype=dtype, device=device)
        full.masked_fill_(~full_visible, minimum)
        sliding_visible = band[None, None] & full_visible
    sliding = torch.zeros(sliding_visible.shape, dtype=dtype, device=device)
    sliding.masked_fill_(~sliding_visible, minimum)
    return {FULL_ATTENTION: full, SLIDING_ATTENTION: sliding}
