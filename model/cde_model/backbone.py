"""The nomic-bert backbone shared by both CDE stages: embeddings, post-norm SwiGLU layers.

Plain functions over weight tensors (no nn.Module): each stage drives the layers itself, so it
can feed precomputed rows in and skip rows whose outputs nobody reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROW_CHUNK = 1024  # rows per MLP chunk: its [rows, 2I] intermediate stays mostly in L3 cache


@dataclass(frozen=True)
class EncoderLayer:
    """One post-norm transformer layer without biases in attention or MLP."""

    wqkv: torch.Tensor  # [3H, H]: rows of q, then k, then v; heads contiguous
    wq: torch.Tensor  # view of the q rows of wqkv
    wkv: torch.Tensor  # view of the k and v rows of wqkv
    out_proj: torch.Tensor  # [H, H]
    fc1: torch.Tensor  # [2I, H]: fc11 rows, then fc12 rows (one matmul for both)
    fc2: torch.Tensor  # [H, I]
    norm1_weight: torch.Tensor
    norm1_bias: torch.Tensor
    norm2_weight: torch.Tensor
    norm2_bias: torch.Tensor


@dataclass(frozen=True)
class Backbone:
    """Word embeddings, token type 0, the embedding LayerNorm and the layers of one stage."""

    word_embeddings: torch.Tensor  # [vocab, H]
    token_type0: torch.Tensor  # [H]
    emb_ln_weight: torch.Tensor
    emb_ln_bias: torch.Tensor
    layers: tuple[EncoderLayer, ...]
    num_heads: int
    eps: float

    @property
    def hidden_size(self) -> int:
        return int(self.word_embeddings.shape[1])

    def embedding_norm(self, rows: torch.Tensor) -> torch.Tensor:
        """The backbone's input LayerNorm (`emb_ln`)."""
        return F.layer_norm(
            rows, (self.hidden_size,), self.emb_ln_weight, self.emb_ln_bias, self.eps
        )

    def token_rows(self, input_ids: torch.Tensor, type_embeddings_added: int) -> torch.Tensor:
        """`word_emb[ids]` plus token type 0 added `type_embeddings_added` times."""
        rows = F.embedding(input_ids, self.word_embeddings)
        for _ in range(type_embeddings_added):  # added one at a time, as published
            rows.add_(self.token_type0)
        return rows


@dataclass(frozen=True)
class Rotary:
    """The published rotary quirk: the angle depends on the head index, not the position.

    angle[h, j] = h * base^(-2j / head_dim), applied in the rotate-half layout.
    """

    cos: torch.Tensor  # [heads, head_dim]
    sin: torch.Tensor  # [heads, head_dim]

    @classmethod
    def for_heads(
        cls, num_heads: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
    ) -> Rotary:
        exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        inverse_frequency = base ** (-exponent)
        angles = torch.outer(torch.arange(num_heads, dtype=torch.float64), inverse_frequency)
        angles = torch.cat((angles, angles), dim=-1)
        return cls(
            cos=angles.cos().to(device=device, dtype=dtype),
            sin=angles.sin().to(device=device, dtype=dtype),
        )

    def apply_(self, heads: torch.Tensor) -> None:
        """Rotate `heads` [..., num_heads, head_dim] in place."""
        half = heads.shape[-1] // 2
        rotated_half = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
        rotated_half.mul_(self.sin)
        heads.mul_(self.cos).add_(rotated_half)


def split_heads(projection: torch.Tensor, parts: int, num_heads: int) -> list[torch.Tensor]:
    """[B, S, parts*H] → `parts` views of shape [B, heads, S, head_dim]."""
    batch, rows, width = projection.shape
    head_dim = width // (parts * num_heads)
    heads = projection.view(batch, rows, parts, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    return list(heads.unbind(0))


def finish_layer(
    layer: EncoderLayer,
    residual: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    eps: float,
    chunk_rows: int = ROW_CHUNK,
) -> torch.Tensor:
    """Attention from projected heads, then out_proj + norm1 and the SwiGLU MLP + norm2.

    residual: [B, Sq, H], the layer input rows that the queries `q` [B, heads, Sq, d] belong to;
    k, v: [B, heads, S, d]; key_mask: bool [B, 1, 1, S] (True = visible) or None.
    Returns the layer output for the query rows, [B, Sq, H].

    The row-wise part runs in chunks of `chunk_rows` rows so that the MLP's wide intermediate
    stays in cache: elementwise work on DRAM-sized tensors would cost as much as the matmuls.
    """
    batch, rows, hidden = residual.shape
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    attended = attended.transpose(1, 2).reshape(batch * rows, hidden)
    residual = residual.reshape(batch * rows, hidden)
    out = torch.empty_like(residual)
    inner = layer.fc2.shape[1]
    for start in range(0, batch * rows, chunk_rows):
        part = slice(start, start + chunk_rows)
        x = F.linear(attended[part], layer.out_proj).add_(residual[part])
        x = F.layer_norm(x, (hidden,), layer.norm1_weight, layer.norm1_bias, eps)
        gate_and_up = F.linear(x, layer.fc1)
        activated = F.silu(gate_and_up[:, inner:]).mul_(gate_and_up[:, :inner])
        y = F.linear(activated, layer.fc2).add_(x)
        out[part] = F.layer_norm(y, (hidden,), layer.norm2_weight, layer.norm2_bias, eps)
    return out.view(batch, rows, hidden)


def masked_mean(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the rows where `mask` is set, in float32: sum / (count + 1e-20)."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    total = (rows.to(torch.float32) * weights).sum(dim=1)
    return total / (weights.sum(dim=1) + 1e-20)
