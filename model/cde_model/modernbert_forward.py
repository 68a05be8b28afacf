"""The forward pass of both cde-small-v2 stages over a `ModernBertModel`'s weights.

It computes what `ModernBertModel.forward` computes (pre-norm layers, RoPE by absolute
position, global and windowed local attention, final norm), with exact shortcuts:
- RoPE rotates q and k together in one pass over the qkv projection (the rotate-half layout
  as two half-width products), with the cos/sin tables kept per sequence length;
- local layers attend block by block: each block of `half_window` query rows scores only the
  keys within reach (the block plus a half window on each side), not every row;
- `keep_from`: a last layer that is global computes queries, attention output, MLP and the
  final norm only for rows from `keep_from` on (stage 2 pools the text rows alone);
- residual adds are fused into the output GEMMs (`addmm`).
Masked scores get a finite minimum, so a padding row whose window holds only padding stays
finite (an all-masked softmax row would be NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import ModernBertModel

from cde_model.modernbert import SLIDING_ATTENTION


@dataclass(frozen=True)
class _Layer:
    """One pre-norm ModernBERT layer's weights (views into the model's parameters)."""

    attn_norm: torch.Tensor | None  # None in layer 0 (identity)
    wqkv: torch.Tensor  # [3H, H]: q rows, k rows, v rows
    wq: torch.Tensor  # view of the q rows
    wkv: torch.Tensor  # view of the k and v rows
    wo: torch.Tensor  # [H, H]
    mlp_norm: torch.Tensor
    wi: torch.Tensor  # [2I, H]: GELU input rows, then gate rows
    wo_mlp: torch.Tensor  # [H, I]
    local: bool
    inv_freq: torch.Tensor  # float32 [d / 2], this layer type's RoPE frequencies


@dataclass(frozen=True)
class _Masks:
    """Additive masks of one forward pass (None: nothing to mask)."""

    full: torch.Tensor | None  # [B, 1, 1, S]: padding keys
    local: torch.Tensor  # banded: [B * blocks, 1, block, window]; else [B or 1, 1, S, S]
    banded: bool


class ModernBertForward:
    """Runs rows through one stage's ModernBertModel (its weights, this forward)."""

    def __init__(self, model: ModernBertModel) -> None:
        config = model.config
        self._hidden = int(config.hidden_size)
        self._heads = int(config.num_attention_heads)
        self._head_dim = self._hidden // self._heads
        self._eps = float(config.norm_eps)
        self._half_window = int(config.local_attention) // 2
        source: Any = model  # submodules, as transformers builds them
        self._embeddings: Any = source.embeddings
        self._emb_norm: torch.Tensor = source.embeddings.norm.weight
        self._final_norm: torch.Tensor = source.final_norm.weight
        self._activation: Callable[[torch.Tensor], torch.Tensor] = source.layers[0].mlp.act
        hidden = self._hidden
        layer_types: list[str] = list(config.layer_types or ())
        layers = []
        for index, layer in enumerate(source.layers):
            wqkv = layer.attn.Wqkv.weight
            layer_type = layer_types[index]
            layers.append(
                _Layer(
                    attn_norm=None if index == 0 else layer.attn_norm.weight,
                    wqkv=wqkv,
                    wq=wqkv[:hidden],
                    wkv=wqkv[hidden:],
                    wo=layer.attn.Wo.weight,
                    mlp_norm=layer.mlp_norm.weight,
                    wi=layer.mlp.Wi.weight,
                    wo_mlp=layer.mlp.Wo.weight,
                    local=layer_type == SLIDING_ATTENTION,
                    inv_freq=getattr(source.rotary_emb, f"{layer_type}_inv_freq").float(),
                )
            )
        self._layers = tuple(layers)
        self._rope_tables: dict[tuple[bool, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`tok_embeddings[ids]` (what `input_ids` means to ModernBertModel, before `LN_emb`)."""
        rows: torch.Tensor = self._embeddings.tok_embeddings(input_ids)
        return rows

    def token_rows(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The embedding module on token ids: `LN_emb(tok_embeddings[ids])`."""
        rows: torch.Tensor = self._embeddings(input_ids=input_ids)
        return rows

    def __call__(
        self, rows: torch.Tensor, valid: torch.Tensor | None, keep_from: int = 0
    ) -> torch.Tensor:
        """`LN_emb`, every layer and the final norm over rows [B, S, H] (as `inputs_embeds`);
        the last hidden state of rows `keep_from:`. valid: bool [B, S], False for padding."""
        batch, length, _ = rows.shape
        masks = self._masks(valid, batch, length, rows.dtype)
        x = self._norm(rows, self._emb_norm)
        last = len(self._layers) - 1
        for index, layer in enumerate(self._layers):
            skip = keep_from if index == last and not layer.local else 0
            x = self._layer(x, layer, masks, skip)
        if keep_from and self._layers[last].local:
            x = x[:, keep_from:]
        return self._norm(x, self._final_norm)

    # ----------------------------------------------------------------------------- layers

    def _layer(self, x: torch.Tensor, layer: _Layer, masks: _Masks, skip: int) -> torch.Tensor:
        """One layer; with `skip`, only rows skip: come out (the rest are keys and values)."""
        batch, length, hidden = x.shape
        heads, head_dim = self._heads, self._head_dim
        a = x if layer.attn_norm is None else self._norm(x, layer.attn_norm)
        cos, sin = self._rope(length, layer, x.dtype)
        if skip:
            kv = (a @ layer.wkv.T).view(batch, length, 2, heads, head_dim)
            k = _rotated(kv[:, :, :1], cos, sin)[:, :, 0]
            v = kv[:, :, 1]
            q_rows = (a[:, skip:] @ layer.wq.T).view(batch, length - skip, 1, heads, head_dim)
            q = _rotated(q_rows, cos[skip:], sin[skip:])[:, :, 0]
            x = x[:, skip:]
        else:
            qkv = (a @ layer.wqkv.T).view(batch, length, 3, heads, head_dim)
            qk = _rotated(qkv[:, :, :2], cos, sin)
            q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]
        if layer.local and masks.banded:
            attended = self._banded_attention(q, k, v, masks.local)
        else:
            mask = masks.local if layer.local else masks.full
            attended = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            ).transpose(1, 2)
        rows = x.shape[1]
        flat = x.reshape(batch * rows, hidden)
        flat = torch.addmm(flat, attended.reshape(batch * rows, hidden), layer.wo.T)
        gate_input, gate = (self._norm(flat, layer.mlp_norm) @ layer.wi.T).chunk(2, dim=-1)
        flat = torch.addmm(flat, self._activation(gate_input) * gate, layer.wo_mlp.T)
        return flat.view(batch, rows, hidden)

    def _banded_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Local attention by blocks of `half_window` queries over their reachable keys.

        q, k, v: [B, S, heads, d]; returns [B, S, heads, d].
        """
        batch, length, heads, head_dim = q.shape
        block, half = self._half_window, self._half_window
        blocks = math.ceil(length / block)
        extra = blocks * block - length
        window = block + 2 * half
        queries = F.pad(q, (0, 0, 0, 0, 0, extra)).view(batch, blocks, block, heads, head_dim)
        queries = queries.permute(0, 1, 3, 2, 4).reshape(batch * blocks, heads, block, head_dim)

        def windows(t: torch.Tensor) -> torch.Tensor:
            padded = F.pad(t, (0, 0, 0, 0, half, extra + half))
            spans = padded.unfold(1, window, block)  # [B, blocks, heads, d, window]
            return spans.permute(0, 1, 2, 4, 3).reshape(batch * blocks, heads, window, head_dim)

        out = F.scaled_dot_product_attention(queries, windows(k), windows(v), attn_mask=mask)
        out = out.view(batch, blocks, heads, block, head_dim).permute(0, 1, 3, 2, 4)
        return out.reshape(batch, blocks * block, heads, head_dim)[:, :length]

    # ----------------------------------------------------------------------------- helpers

    def _masks(
        self, valid: torch.Tensor | None, batch: int, length: int, dtype: torch.dtype
    ) -> _Masks:
        """Padding masks for global layers; band and padding masks for local ones."""
        minimum = torch.finfo(dtype).min
        device = self._emb_norm.device
        full = None
        if valid is not None:
            full = torch.zeros(batch, 1, 1, length, dtype=dtype, device=device)
            full.masked_fill_(~valid[:, None, None, :], minimum)
        half = self._half_window
        block = half
        window = block + 2 * half
        blocks = math.ceil(length / block)
        if blocks * block * window >= length * length:  # no fewer scores than all pairs
            positions = torch.arange(length, device=device)
            visible = ((positions[:, None] - positions[None, :]).abs() <= half)[None, None]
            if valid is not None:
                visible = visible & valid[:, None, None, :]
            local = torch.zeros(visible.shape, dtype=dtype, device=device)
            return _Masks(full, local.masked_fill_(~visible, minimum), banded=False)
        keys = (
            torch.ones(batch, length, dtype=torch.bool, device=device) if valid is None else valid
        )
        extra = blocks * block - length
        reachable = F.pad(keys, (half, extra + half), value=False).unfold(1, window, block)
        offsets = (
            torch.arange(window, device=device)[None, :]
            - torch.arange(block, device=device)[:, None]
        )
        band = (offsets >= 0) & (offsets <= 2 * half)  # [block, window]
        visible = band[None, None] & reachable[:, :, None, :]  # [B, blocks, block, window]
        local = torch.zeros(visible.shape, dtype=dtype, device=device)
        local.masked_fill_(~visible, minimum)
        return _Masks(full, local.view(batch * blocks, 1, block, window), banded=True)

    def _rope(
        self, length: int, layer: _Layer, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [S, 1, 1, d/2] of positions 0..S-1, float32 (rounded through the
        model's dtype, as transformers does); one growing table per layer type and dtype."""
        key = (layer.local, dtype)
        tables = self._rope_tables.get(key)
        if tables is None or tables[0].shape[0] < length:
            positions = torch.arange(
                max(length, 1024), device=layer.inv_freq.device, dtype=torch.float32
            )
            angles = positions[:, None] * layer.inv_freq[None, :]
            cos = angles.cos().to(dtype).float()[:, None, None, :]
            sin = angles.sin().to(dtype).float()[:, None, None, :]
            tables = (cos, sin)
            self._rope_tables[key] = tables
        return tables[0][:length], tables[1][:length]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self._hidden,), weight, None, self._eps)


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE, rotate-half layout, on x [B, S, n, heads, d] in float32, back in x's dtype:
    (x1, x2) -> (x1·cos - x2·sin, x2·cos + x1·sin)."""
    half = x.shape[-1] // 2
    source = x.float()
    x1, x2 = source[..., :half], source[..., half:]
    out = torch.empty(source.shape, dtype=torch.float32, device=x.device)
    first, second = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=first)
    first.addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=second)
    second.addcmul_(x1, sin)
    return out.to(x.dtype)
