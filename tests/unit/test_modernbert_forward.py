"""`ModernBertForward` computes what transformers' `ModernBertModel.forward` computes: with
padding, in the banded and the whole-sequence local attention, and for the rows it keeps."""

from __future__ import annotations

import pytest
import torch
from cde_model.modernbert_forward import ModernBertForward
from transformers import ModernBertConfig, ModernBertModel

TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def model() -> ModernBertModel:
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        local_attention=16,
        layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
        cls_token_id=None,
        sep_token_id=None,
    )
    config._attn_implementation = "sdpa"
    built = ModernBertModel(config)
    module: torch.nn.Module = built  # nn.Module's typed methods
    module.eval()
    return built


@pytest.mark.parametrize("length", [10, 61])  # 61: the local layers attend in bands
@pytest.mark.parametrize("keep_from", [0, 7])
def test_equals_modernbert_forward(model: ModernBertModel, length: int, keep_from: int) -> None:
    generator = torch.Generator().manual_seed(length)
    rows = torch.randn(3, length, 64, generator=generator)
    lengths = torch.tensor([length, keep_from + 2, keep_from + 1])
    valid = torch.arange(length)[None, :] < lengths[:, None]
    with torch.inference_mode():
        expected = model(inputs_embeds=rows, attention_mask=valid.long()).last_hidden_state
        got = ModernBertForward(model)(rows, valid, keep_from=keep_from)
        unpadded = ModernBertForward(model)(rows[:1], None, keep_from=keep_from)
    assert got.shape == (3, length - keep_from, 64)
    for index, size in enumerate(lengths.tolist()):
        wanted = expected[index, keep_from:size]
        assert (got[index, : size - keep_from] - wanted).abs().max() <= TOLERANCE
    assert bool(torch.isfinite(got).all())  # padding rows too
    assert (unpadded[0] - expected[0, keep_from:]).abs().max() <= TOLERANCE
