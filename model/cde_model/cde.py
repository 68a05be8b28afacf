"""cde-small-v1: both stages of the published model, computed exactly but without waste.

Exact shortcuts (see docs/cde-small-v1.md for the published computation):
- Stage 1: the rotary quirk rotates every row of a head alike, which cancels in q·k; skipped.
- Stage 2: the N dataset rows and 8 prompt rows enter layer 0 identically for every text, so
  their `emb_ln` output and layer-0 q/k/v are computed once per context (`prepare_context`).
- Stage 2, last layer: only text rows are pooled, so queries, attention output and MLP are
  computed for text rows only (keys and values still come from every row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from cde_model.backbone import Rotary, finish_layer, masked_mean, split_heads
from cde_model.checkpoint import (
    CDEWeights,
    build_weights,
    soft_prompt_rows,
)
from cde_model.config import CDEConfig
from cde_model.description import describe_checkpoint
from cde_model.interface import (
    context_rows,
    tensor_nbytes,
)
from cde_model.loading import (
    CheckpointFormat,
    CheckpointModel,
    FixedRowsContext,
    LoadedCheckpoint,
)


@dataclass(frozen=True)
class CDEContext(FixedRowsContext):
    """Layer-0 state of the N dataset rows followed by the 8 prompt rows."""

    model_fingerprint: str
    layer0_input: torch.Tensor  # [N+8, H]: emb_ln(row + token type 0)
    layer0_qkv: torch.Tensor  # [N+8, 3H]: layer-0 projections, prompt rows rotated

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.layer0_input, self.layer0_qkv)

    @property
    def rows_per_text(self) -> int:
        return int(self.layer0_input.shape[0])


class CDEModel(CheckpointModel[CDEContext]):
    """A cde-small-v1 checkpoint on one device and dtype."""

    context_kind = CDEContext
    checkpoint_format = CheckpointFormat(
        read_config=CDEConfig.from_file,
        describe=describe_checkpoint,
        build_weights=build_weights,
        vocab_rows=lambda weights: int(weights.first_stage.word_embeddings.shape[0]),
    )

    def __init__(self, loaded: LoadedCheckpoint[CDEConfig, CDEWeights]) -> None:
        weights, config = loaded.weights, loaded.config
        self._weights = weights
        self._config = config
        self.tokenizer = loaded.description.tokenizer
        self.info = loaded.description.info
        self._token_budget = loaded.token_budget
        self._vocab_rows = loaded.vocab_rows
        self._device, self._dtype = loaded.device, loaded.dtype
        hidden = weights.second_stage.hidden_size
        self._head_dim = hidden // config.num_heads
        self._rotary = Rotary.for_heads(
            config.num_heads, self._head_dim, config.rotary_base, self._device, self._dtype
        )
        self._prompt_rows = soft_prompt_rows(
            weights.prompt_projection, hidden, self._device, self._dtype
        )

    # ----------------------------------------------------------------------------- stage 1

    def _first_stage_pack(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        backbone = self._weights.first_stage
        x = backbone.embedding_norm(backbone.token_rows(ids, 1))
        key_mask = None if bool(mask.all()) else mask[:, None, None, :]
        for layer in backbone.layers:
            q, k, v = split_heads(F.linear(x, layer.wqkv), 3, backbone.num_heads)
            x = finish_layer(layer, x, q, k, v, key_mask, backbone.eps)
        pooled = masked_mean(x, mask).to(self._dtype)
        return self._weights.first_stage_mlp(pooled, F.gelu)

    # ----------------------------------------------------------------------------- context

    @torch.inference_mode()
    def prepare_context(
        self, dataset_embeddings: torch.Tensor | npt.NDArray[np.floating[Any]]
    ) -> CDEContext:
        corpus_size = self.info.corpus_size
        rows = context_rows(dataset_embeddings, self.info)
        rows = rows.to(device=self._device, dtype=self._dtype)
        backbone = self._weights.second_stage
        layer0_input = backbone.embedding_norm(
            torch.cat((rows, self._prompt_rows)) + backbone.token_type0
        )
        layer0_qkv = F.linear(layer0_input, backbone.layers[0].wqkv)
        self._rotate(layer0_qkv.unsqueeze(0), parts=3, rotated_parts=2, first_row=corpus_size)
        return CDEContext(self.info.fingerprint, layer0_input, layer0_qkv)

    # ----------------------------------------------------------------------------- stage 2

    def _second_stage_pack(
        self, ids: torch.Tensor, mask: torch.Tensor, context: CDEContext
    ) -> torch.Tensor:
        backbone = self._weights.second_stage
        heads, eps = backbone.num_heads, backbone.eps
        batch, length = ids.shape
        fixed, hidden = context.layer0_input.shape  # N dataset rows + 8 prompt rows
        corpus_size = self.info.corpus_size

        # Text rows carry token type 0 twice: once from the embedding module, once more when
        # the backbone embeds the assembled sequence.
        text = backbone.embedding_norm(backbone.token_rows(ids, 2))
        text_qkv = F.linear(text, backbone.layers[0].wqkv)
        self._rotate(text_qkv, parts=3, rotated_parts=2, first_row=0)
        x = torch.cat((context.layer0_input.expand(batch, fixed, hidden), text), dim=1)
        qkv = torch.cat((context.layer0_qkv.expand(batch, fixed, 3 * hidden), text_qkv), dim=1)
        if bool(mask.all()):
            key_mask = None
        else:
            visible = torch.ones(batch, fixed, dtype=torch.bool, device=mask.device)
            key_mask = torch.cat((visible, mask), dim=1)[:, None, None, :]

        last = len(backbone.layers) - 1
        for index, layer in enumerate(backbone.layers):
            if index == 0:
                q, k, v = split_heads(qkv, 3, heads)
            elif index < last:
                qkv = F.linear(x, layer.wqkv)
                self._rotate(qkv, parts=3, rotated_parts=2, first_row=corpus_size)
                q, k, v = split_heads(qkv, 3, heads)
            else:
                kv = F.linear(x, layer.wkv)
                self._rotate(kv, parts=2, rotated_parts=1, first_row=corpus_size)
                k, v = split_heads(kv, 2, heads)
                text_q = F.linear(x[:, fixed:], layer.wq)
                self._rotate(text_q, parts=1, rotated_parts=1, first_row=0)
                (q,) = split_heads(text_q, 1, heads)
            if index == last:
                # Only text rows are pooled: the last layer computes outputs for them alone.
                q = q[:, :, -length:]
                x = finish_layer(layer, x[:, fixed:], q, k, v, key_mask, eps)
            else:
                x = finish_layer(layer, x, q, k, v, key_mask, eps)

        pooled = masked_mean(x, mask).to(self._dtype)
        return self._weights.output_projection(pooled, F.relu)

    # ----------------------------------------------------------------------------- helpers

    def _rotate(
        self, projection: torch.Tensor, parts: int, rotated_parts: int, first_row: int
    ) -> None:
        """Apply the rotary quirk in place to the first `rotated_parts` of q/k/v from a row on."""
        batch, rows, _ = projection.shape
        heads = projection.view(batch, rows, parts, self._config.num_heads, self._head_dim)
        self._rotary.apply_(heads[:, first_row:, :rotated_parts])
