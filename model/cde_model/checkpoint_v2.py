"""Reading a checkpoint in the published cde-small-v2 layout into validated weight tensors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cde_model.checkpoint import ProjectionMLP, Shape, check_tensors, head_shapes
from cde_model.config_v2 import CDEV2Config
from cde_model.description import FIRST_STAGE, SECOND_STAGE

TOKEN_EMBEDDINGS = "embeddings.tok_embeddings.weight"  # under a stage prefix


@dataclass(frozen=True)
class BackboneSizes:
    """Backbone sizes read from the tensor shapes."""

    vocab: int
    hidden: int
    inner: int  # MLP intermediate size I (Wi has 2I rows)
    layers: int


@dataclass(frozen=True)
class CDEV2Weights:
    """Both backbones' state dicts (stage prefix stripped) and the three projection heads."""

    sizes: BackboneSizes
    first_stage: dict[str, torch.Tensor]
    first_stage_mlp: ProjectionMLP
    second_stage: dict[str, torch.Tensor]
    prompt_projection: ProjectionMLP
    output_projection: ProjectionMLP


def backbone_sizes(
    config: CDEV2Config, shapes: Mapping[str, list[int]], source: str
) -> BackboneSizes:
    """Vocabulary rows, hidden and MLP sizes from the shapes; the layer count from the config."""
    words = f"{FIRST_STAGE}.{TOKEN_EMBEDDINGS}"
    mlp_out = f"{FIRST_STAGE}.layers.0.mlp.Wo.weight"
    for name in (words, mlp_out):
        if name not in shapes:
            raise ValueError(f"{source}: missing tensor {name}")
        if len(shapes[name]) != 2:
            raise ValueError(f"{source}: tensor {name} must be 2-D, has shape {shapes[name]}")
    vocab, hidden = shapes[words]
    heads = config.num_heads
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden size {hidden} does not split into {heads} heads of even size")
    extra = f"{FIRST_STAGE}.layers.{config.num_layers}.attn.Wqkv.weight"
    if extra in shapes:
        raise ValueError(
            f"{source}: the weights have more than the {config.num_layers} layers "
            "the config describes"
        )
    return BackboneSizes(vocab, hidden, shapes[mlp_out][1], config.num_layers)


def expected_shapes(sizes: BackboneSizes) -> dict[str, Shape]:
    """Every tensor the model reads, with its shape."""
    expected: dict[str, Shape] = {}
    for prefix in (FIRST_STAGE, SECOND_STAGE):
        for name, shape in backbone_shapes(sizes).items():
            expected[f"{prefix}.{name}"] = shape
    return {**expected, **head_shapes(sizes.hidden)}


def backbone_shapes(sizes: BackboneSizes) -> dict[str, Shape]:
    """ModernBertModel state-dict names (no stage prefix) and shapes: no biases, weight-only
    LayerNorms, no attention norm in layer 0."""
    hidden, inner = sizes.hidden, sizes.inner
    shapes: dict[str, Shape] = {
        TOKEN_EMBEDDINGS: (sizes.vocab, hidden),
        "embeddings.norm.weight": (hidden,),
        "final_norm.weight": (hidden,),
    }
    for i in range(sizes.layers):
        layer = f"layers.{i}"
        if i:
            shapes[f"{layer}.attn_norm.weight"] = (hidden,)
        shapes[f"{layer}.attn.Wqkv.weight"] = (3 * hidden, hidden)
        shapes[f"{layer}.attn.Wo.weight"] = (hidden, hidden)
        shapes[f"{layer}.mlp_norm.weight"] = (hidden,)
        shapes[f"{layer}.mlp.Wi.weight"] = (2 * inner, hidden)
        shapes[f"{layer}.mlp.Wo.weight"] = (hidden, inner)
    return shapes


def build_v2_weights(
    config: CDEV2Config,
    tensors: Mapping[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    source: str = "model.safetensors",
) -> CDEV2Weights:
    """Check names and shapes, then cast and split the tensors by stage."""
    sizes = backbone_sizes(config, {k: list(v.shape) for k, v in tensors.items()}, source)
    check_tensors(tensors, expected_shapes(sizes), source)

    def get(name: str) -> torch.Tensor:
        return tensors[name].to(device=device, dtype=dtype)

    def stage(prefix: str) -> dict[str, torch.Tensor]:
        return {name: get(f"{prefix}.{name}") for name in backbone_shapes(sizes)}

    def projection(prefix: str) -> ProjectionMLP:
        return ProjectionMLP(
            get(f"{prefix}.0.weight"),
            get(f"{prefix}.0.bias"),
            get(f"{prefix}.2.weight"),
            get(f"{prefix}.2.bias"),
        )

    return CDEV2Weights(
        sizes=sizes,
        first_stage=stage(FIRST_STAGE),
        first_stage_mlp=projection("first_stage_model.mlp"),
        second_stage=stage(SECOND_STAGE),
        prompt_projection=projection("second_stage_model.prompt_projection"),
        output_projection=projection("second_stage_model.output_projection"),
    )
