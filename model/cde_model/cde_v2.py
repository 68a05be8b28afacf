"""cde-small-v2: both stages of the published model on transformers' ModernBertModel.

What the published implementation computes (docs: cde-small-v2.md), reproduced as it is:
- stage 1: backbone on the token ids, mean over non-pad rows ([CLS]/[SEP] included), MLP;
- stage 2: rows [dataset; 8 prompt rows; LN_emb(token embeddings)] enter the backbone as
  `inputs_embeds` (so text rows are normalized twice), RoPE on every row by absolute position,
  the N + 8 rows never masked; the pool covers text rows after the instruction (up to the
  first ":" token), and the output projection has a residual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from transformers import ModernBertConfig

from cde_model.backbone import masked_mean
from cde_model.checkpoint import soft_prompt_rows
from cde_model.checkpoint_v2 import CDEV2Weights, build_v2_weights
from cde_model.config_v2 import CDEV2Config
from cde_model.description import describe_v2_checkpoint
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
from cde_model.modernbert import build_backbone, modernbert_config
from cde_model.modernbert_forward import ModernBertForward
from cde_model.tokenizer_v2 import instruction_end_id


@dataclass(frozen=True)
class CDEV2Context(FixedRowsContext):
    """The stage-2 rows shared by every text: dataset rows, then the 8 prompt rows."""

    model_fingerprint: str
    fixed_rows: torch.Tensor  # [n + 8, H] in the model's dtype, on its device

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.fixed_rows)

    @property
    def rows_per_text(self) -> int:
        return int(self.fixed_rows.shape[0])


def instruction_pool_mask(ids: torch.Tensor, mask: torch.Tensor, end_id: int) -> torch.Tensor:
    """`mask` without the instruction: positions 0..e, e the first p >= 1 holding `end_id`.

    Rows without such a token keep every position (their [CLS] included).
    """
    hits = (ids == end_id) & mask
    hits[:, 0] = False
    found = hits.any(dim=1)
    end = hits.to(torch.int8).argmax(dim=1)
    positions = torch.arange(ids.shape[1], device=ids.device)
    instruction = (positions[None, :] <= end[:, None]) & found[:, None]
    return mask & ~instruction


class CDEV2Model(CheckpointModel[CDEV2Context]):
    """A cde-small-v2 checkpoint on one device and dtype."""

    backbone_config: ModernBertConfig

    context_kind = CDEV2Context
    checkpoint_format = CheckpointFormat(
        read_config=CDEV2Config.from_file,
        describe=describe_v2_checkpoint,
        build_weights=build_v2_weights,
        vocab_rows=lambda weights: weights.sizes.vocab,
    )

    def __init__(self, loaded: LoadedCheckpoint[CDEV2Config, CDEV2Weights]) -> None:
        weights, config, device, dtype = loaded.weights, loaded.config, loaded.device, loaded.dtype
        tokenizer = loaded.description.tokenizer
        backbone_config = modernbert_config(config.backbone, weights.sizes)
        self.backbone_config = backbone_config  # both stages' ModernBertConfig
        self._first = ModernBertForward(
            build_backbone(backbone_config, weights.first_stage, device)
        )
        self._second = ModernBertForward(
            build_backbone(backbone_config, weights.second_stage, device)
        )
        self._first_stage_mlp = weights.first_stage_mlp
        self._output_projection = weights.output_projection
        self._config = config
        self._vocab_rows = loaded.vocab_rows
        self._device, self._dtype = device, dtype
        self._end_id = (
            instruction_end_id(tokenizer) if config.pool_ignore_instruction_tokens else None
        )
        self.tokenizer = tokenizer
        self.info = loaded.description.info
        self._token_budget = loaded.token_budget
        hidden = weights.sizes.hidden
        self._prompt_rows = soft_prompt_rows(weights.prompt_projection, hidden, device, dtype)

    # ----------------------------------------------------------------------------- stage 1

    def _first_stage_pack(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = None if bool(mask.all()) else mask
        hidden = self._first(self._first.token_embeddings(ids), valid)
        pooled = masked_mean(hidden, mask).to(self._dtype)
        return self._first_stage_mlp(pooled, F.gelu)

    # ----------------------------------------------------------------------------- context

    @torch.inference_mode()
    def prepare_context(
        self, dataset_embeddings: torch.Tensor | npt.NDArray[np.floating[Any]]
    ) -> CDEV2Context:
        rows = context_rows(dataset_embeddings, self.info, fewer_allowed=True)
        rows = rows.to(device=self._device, dtype=self._dtype)
        return CDEV2Context(self.info.fingerprint, torch.cat((rows, self._prompt_rows)))

    # ----------------------------------------------------------------------------- stage 2

    def _second_stage_pack(
        self, ids: torch.Tensor, mask: torch.Tensor, context: CDEV2Context
    ) -> torch.Tensor:
        batch = ids.shape[0]
        fixed, hidden = context.fixed_rows.shape
        # The embedding module normalizes the text rows once; the backbone, given the whole
        # sequence as inputs_embeds, normalizes every row (text rows a second time).
        text = self._second.token_rows(ids)
        rows = torch.cat((context.fixed_rows.expand(batch, fixed, hidden), text), dim=1)
        if bool(mask.all()):
            valid = None
        else:
            always = torch.ones(batch, fixed, dtype=torch.bool, device=mask.device)
            valid = torch.cat((always, mask), dim=1)
        # Only the text rows are pooled: the last layer computes outputs for them alone.
        text_states = self._second(rows, valid, keep_from=fixed)
        pool = mask if self._end_id is None else instruction_pool_mask(ids, mask, self._end_id)
        pooled = masked_mean(text_states, pool).to(self._dtype)
        return self._output_projection(pooled, F.relu) + pooled
