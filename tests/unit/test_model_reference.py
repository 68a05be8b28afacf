"""The optimized stages agree with a literal, slow reading of docs/cde-small-v1.md.

golden.json only has 2 layers (layer 0 and the last layer, both special-cased); a random
checkpoint with 4 layers also covers the middle layers, and `limit_layers=1` a single layer
that is both first and last.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from cde_model import load_model
from cde_model.random_checkpoint import CheckpointShape, write_random_checkpoint
from safetensors.torch import load_file
from support.paths import TINY_CHECKPOINT

FOUR_LAYERS = CheckpointShape(48, 4, 3, 128, 30528, 8, inline_backbone_config=True)
TEXTS = ["search_query: who wrote hamlet", "search_document: " + "many words " * 30, ""]


class Reference:
    """The published computation, step by step, in float64."""

    def __init__(self, directory: Path) -> None:
        self.config: dict[str, Any] = json.loads((directory / "config.json").read_text())
        self.tensors = {
            k: v.double() for k, v in load_file(str(directory / "model.safetensors")).items()
        }
        backbone = self.config["embedder_config"]
        self.heads = backbone["n_head"]
        self.layers = backbone["n_layer"]
        self.base = backbone["rotary_emb_base"]
        self.corpus_size = self.config["transductive_corpus_size"]

    def t(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """The quirk: angle = head index * base^(-2j/d), rotate-half layout. x: [B, h, S, d]."""
        d = x.shape[-1]
        inverse_frequency = self.base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles = torch.arange(self.heads, dtype=torch.float64)[:, None] * inverse_frequency
        angles = torch.cat((angles, angles), -1)[None, :, None, :]
        rotated_half = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), -1)
        return x * angles.cos() + rotated_half * angles.sin()

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        weight, bias = self.t(f"{name}.weight"), self.t(f"{name}.bias")
        return F.layer_norm(x, weight.shape, weight, bias, 1e-12)

    def backbone(
        self, prefix: str, inputs: torch.Tensor, mask: torch.Tensor, layers: int, rotate_from: int
    ) -> torch.Tensor:
        hidden = inputs.shape[-1]
        x = inputs + self.t(f"{prefix}.embeddings.token_type_embeddings.weight")[0]
        x = self.norm(x, f"{prefix}.emb_ln")
        batch, rows, _ = x.shape
        d = hidden // self.heads
        for i in range(layers):
            p = f"{prefix}.encoder.layers.{i}"
            qkv = (x @ self.t(f"{p}.attn.Wqkv.weight").T).view(batch, rows, 3, self.heads, d)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            q = torch.cat((q[:, :, :rotate_from], self.rotate(q[:, :, rotate_from:])), 2)
            k = torch.cat((k[:, :, :rotate_from], self.rotate(k[:, :, rotate_from:])), 2)
            scores = q @ k.transpose(-1, -2) / math.sqrt(d)
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
            attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, rows, hidden)
            x = self.norm(x + attended @ self.t(f"{p}.attn.out_proj.weight").T, f"{p}.norm1")
            gate = F.silu(x @ self.t(f"{p}.mlp.fc12.weight").T)
            mlp = (x @ self.t(f"{p}.mlp.fc11.weight").T) * gate
            x = self.norm(x + mlp @ self.t(f"{p}.mlp.fc2.weight").T, f"{p}.norm2")
        return x

    def projection(self, prefix: str, x: torch.Tensor, activation: Any) -> torch.Tensor:
        x = activation(x @ self.t(f"{prefix}.0.weight").T + self.t(f"{prefix}.0.bias"))
        return x @ self.t(f"{prefix}.2.weight").T + self.t(f"{prefix}.2.bias")

    def first_stage(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        prefix = "first_stage_model.embedder"
        layers = self.config.get("limit_layers_first_stage") or self.layers
        words = self.t(f"{prefix}.embeddings.word_embeddings.weight")[ids]
        # Rotation applied to every row: the quirk makes it cancel.
        x = self.backbone(prefix, words, mask, layers, rotate_from=0)
        pooled = (x * mask[..., None]).sum(1) / (mask.sum(1, keepdim=True) + 1e-20)
        return self.projection("first_stage_model.mlp", pooled, F.gelu)

    def second_stage(
        self, ids: torch.Tensor, mask: torch.Tensor, dataset: torch.Tensor
    ) -> torch.Tensor:
        prefix = "second_stage_model.backbone"
        layers = self.config.get("limit_layers") or self.layers
        hidden = dataset.shape[1]
        prompt = self.projection(
            "second_stage_model.prompt_projection", torch.ones(hidden, dtype=torch.float64), F.relu
        )
        batch = ids.shape[0]
        words = self.t(f"{prefix}.embeddings.word_embeddings.weight")[ids]
        words = words + self.t(f"{prefix}.embeddings.token_type_embeddings.weight")[0]
        inputs = torch.cat(
            (
                dataset[None].expand(batch, -1, -1),
                prompt.view(1, 8, hidden).expand(batch, -1, -1),
                words,
            ),
            1,
        )
        full_mask = torch.cat((torch.ones(batch, self.corpus_size + 8, dtype=torch.bool), mask), 1)
        x = self.backbone(prefix, inputs, full_mask, layers, rotate_from=self.corpus_size)
        text = x[:, self.corpus_size + 8 :]
        pooled = (text * mask[..., None]).sum(1) / (mask.sum(1, keepdim=True) + 1e-20)
        return self.projection("second_stage_model.output_projection", pooled, F.relu)


def compare(directory: Path) -> tuple[float, float]:
    """Relative max abs difference of (stage 1, stage 2) between the model and the reference."""
    model = load_model(str(directory), device="cpu")
    reference = Reference(directory)
    ids_np, mask_np = model.tokenizer.encode(TEXTS)
    ids, mask = torch.from_numpy(ids_np), torch.from_numpy(mask_np).bool()
    first = model.first_stage(ids_np, mask_np)
    expected_first = reference.first_stage(ids, mask)
    dataset = first[[i % len(TEXTS) for i in range(model.info.corpus_size)]]
    second = model.second_stage(ids_np, mask_np, model.prepare_context(dataset))
    expected_second = reference.second_stage(ids, mask, dataset.double())
    return (
        float((first.double() - expected_first).abs().max() / expected_first.abs().max()),
        float((second.double() - expected_second).abs().max() / expected_second.abs().max()),
    )


def test_reference_reproduces_golden() -> None:
    """The reference itself is right: it matches golden.json on the tiny fixture."""
    golden = json.loads((TINY_CHECKPOINT / "golden.json").read_text())
    reference = Reference(TINY_CHECKPOINT)
    model = load_model(str(TINY_CHECKPOINT), device="cpu")
    ids, mask = model.tokenizer.encode([golden["query_prefix"] + q for q in golden["queries"]])
    dataset = torch.tensor(golden["dataset_embeddings"], dtype=torch.float64)
    out = reference.second_stage(torch.from_numpy(ids), torch.from_numpy(mask).bool(), dataset)
    expected = torch.tensor(golden["query_embeddings"], dtype=torch.float64)
    assert (out - expected).abs().max() <= golden["tolerance"]["max_abs"]


@pytest.mark.parametrize("limit_layers", [None, 1, 3])
def test_model_matches_reference_with_middle_layers(
    tmp_path: Path, limit_layers: int | None
) -> None:
    # Large weights make attention peaky, so a wrong rotation or mask would show.
    directory = write_random_checkpoint(tmp_path, FOUR_LAYERS, seed=3, std=0.3)
    config = json.loads((directory / "config.json").read_text())
    config["limit_layers"] = limit_layers
    (directory / "config.json").write_text(json.dumps(config))
    first, second = compare(directory)
    assert first <= 1e-5 and second <= 1e-5
