"""Packing token rows into forward passes: sort by length, fill a token budget, trim padding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from cde_model.interface import TokenArray


@dataclass(frozen=True)
class TokenBatch:
    """Validated token rows, right-aligned (valid tokens first in every row)."""

    input_ids: torch.Tensor  # int64 [B, L]
    attention_mask: torch.Tensor  # bool [B, L]
    lengths: torch.Tensor  # int64 [B]

    @classmethod
    def from_inputs(
        cls,
        input_ids: TokenArray,
        attention_mask: TokenArray,
        vocab_size: int,
        max_tokens: int,
    ) -> TokenBatch:
        """Check shapes, token ids and lengths; move padding to the right of each row.

        The CDE stages ignore token order, and the demo model needs right padding for its
        position ids, so any padding layout is accepted.
        """
        ids = torch.as_tensor(input_ids).to(torch.int64)
        mask = torch.as_tensor(attention_mask).to(torch.bool)
        if ids.dim() != 2 or ids.shape != mask.shape:
            raise ValueError(
                "input_ids and attention_mask must both be [batch, length]; got "
                f"{list(ids.shape)} and {list(mask.shape)}"
            )
        lengths = mask.sum(dim=1)
        if ids.numel():
            valid_ids = ids[mask]
            if valid_ids.numel() and (valid_ids.min() < 0 or valid_ids.max() >= vocab_size):
                raise ValueError(f"token ids must lie in [0, {vocab_size})")
            if int(lengths.max()) > max_tokens:
                raise ValueError(
                    f"a row has {int(lengths.max())} tokens, more than the model's {max_tokens}"
                )
        positions = torch.arange(ids.shape[1])
        if not torch.equal(mask, positions < lengths[:, None]):
            order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
            ids = ids.gather(1, order)
            mask = mask.gather(1, order)
        return cls(ids, mask, lengths)

    def packs(
        self, token_budget: int, rows_per_item: int = 0
    ) -> Iterator[tuple[torch.Tensor, int]]:
        """(row indices, trimmed length) per forward pass, longest rows first.

        A pass holds as many rows as fit `token_budget`, counting each row as its pack's longest
        length plus `rows_per_item` extra positions (the second stage's context and prompt rows).
        """
        order = torch.argsort(self.lengths, descending=True, stable=True)
        start = 0
        total = len(order)
        while start < total:
            longest = max(int(self.lengths[order[start]]), 1)
            count = max(1, token_budget // (longest + rows_per_item))
            yield order[start : start + count], longest
            start += count

    def embed_packs(
        self,
        run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        width: int,
        token_budget: int,
        device: torch.device,
        rows_per_item: int = 0,
    ) -> torch.Tensor:
        """`run(ids, mask)` on `device` for each pack of `packs()`; float32 [rows, width] on CPU,
        in input order."""
        out = torch.empty(len(self.lengths), width, dtype=torch.float32)
        for rows, length in self.packs(token_budget, rows_per_item):
            ids = self.input_ids[rows, :length].to(device)
            mask = self.attention_mask[rows, :length].to(device)
            out[rows] = run(ids, mask).float().cpu()
        return out
