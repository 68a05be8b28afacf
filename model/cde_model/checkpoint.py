"""Reading a checkpoint in the published cde-small-v1 layout into validated weight tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cde_model.backbone import Backbone, EncoderLayer
from cde_model.config import CDEConfig
from cde_model.description import FIRST_STAGE, SECOND_STAGE, word_embedding_names

NUM_PROMPT_ROWS = 8  # soft-prompt rows of the second stage

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ProjectionMLP:
    """Linear → activation → Linear (the first-stage head, prompt and output projections)."""

    weight0: torch.Tensor
    bias0: torch.Tensor
    weight2: torch.Tensor
    bias2: torch.Tensor

    def __call__(
        self, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        return F.linear(activation(F.linear(x, self.weight0, self.bias0)), self.weight2, self.bias2)


@dataclass(frozen=True)
class CDEWeights:
    """All tensors of both stages, on the target device and dtype."""

    first_stage: Backbone
    first_stage_mlp: ProjectionMLP
    second_stage: Backbone
    prompt_projection: ProjectionMLP
    output_projection: ProjectionMLP


@dataclass(frozen=True)
class _Sizes:
    hidden: int
    vocab: int
    inner: int


def checkpoint_paths(directory: Path) -> tuple[Path, Path]:
    """config.json and model.safetensors of a checkpoint directory (FileNotFoundError when the
    directory or its config is missing; read_tensors checks the weights)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"checkpoint config not found: {config_path}")
    return config_path, directory / "model.safetensors"


def soft_prompt_rows(
    projection: Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor],
    hidden: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The second stage's NUM_PROMPT_ROWS soft-prompt rows: the prompt projection of ones."""
    with torch.inference_mode():
        ones = torch.ones(hidden, device=device, dtype=dtype)
        return projection(ones, torch.nn.functional.relu).reshape(NUM_PROMPT_ROWS, hidden)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with a clear error for an unreadable one."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc


def build_weights(
    config: CDEConfig,
    tensors: Mapping[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    source: str = "model.safetensors",
) -> CDEWeights:
    """Check names and shapes against the config, then cast and arrange the tensors."""
    first_words, second_words = word_embedding_names(config, tensors)
    sizes = _sizes(tensors, first_words, source)
    expected = _expected_shapes(config, sizes, first_words, second_words)
    check_tensors(tensors, expected, source)

    def get(name: str) -> torch.Tensor:
        return tensors[name].to(device=device, dtype=dtype)

    def projection(prefix: str) -> ProjectionMLP:
        return ProjectionMLP(
            get(f"{prefix}.0.weight"),
            get(f"{prefix}.0.bias"),
            get(f"{prefix}.2.weight"),
            get(f"{prefix}.2.bias"),
        )

    first_words_tensor = get(first_words)
    second_words_tensor = first_words_tensor if second_words == first_words else get(second_words)
    return CDEWeights(
        first_stage=_backbone(
            FIRST_STAGE, first_words_tensor, config.first_stage_layers, config, get
        ),
        first_stage_mlp=projection("first_stage_model.mlp"),
        second_stage=_backbone(
            SECOND_STAGE, second_words_tensor, config.second_stage_layers, config, get
        ),
        prompt_projection=projection("second_stage_model.prompt_projection"),
        output_projection=projection("second_stage_model.output_projection"),
    )


def _sizes(tensors: Mapping[str, torch.Tensor], word_embeddings: str, source: str) -> _Sizes:
    fc11 = f"{FIRST_STAGE}.encoder.layers.0.mlp.fc11.weight"
    for name in (word_embeddings, fc11):
        if name not in tensors:
            raise ValueError(f"{source}: missing tensor {name}")
        if tensors[name].dim() != 2:
            raise ValueError(
                f"{source}: tensor {name} must be 2-D, has shape {_fmt(tensors[name])}"
            )
    vocab, hidden = tensors[word_embeddings].shape
    return _Sizes(hidden=hidden, vocab=vocab, inner=tensors[fc11].shape[0])


def _expected_shapes(
    config: CDEConfig, sizes: _Sizes, first_words: str, second_words: str
) -> dict[str, Shape]:
    hidden, inner = sizes.hidden, sizes.inner
    if hidden % config.num_heads or (hidden // config.num_heads) % 2:
        raise ValueError(
            f"hidden size {hidden} does not split into {config.num_heads} heads of even size"
        )
    expected: dict[str, Shape] = {
        first_words: (sizes.vocab, hidden),
        second_words: (sizes.vocab, hidden),
    }
    for prefix, num_layers in (
        (FIRST_STAGE, config.first_stage_layers),
        (SECOND_STAGE, config.second_stage_layers),
    ):
        expected[f"{prefix}.embeddings.token_type_embeddings.weight"] = (2, hidden)
        expected[f"{prefix}.emb_ln.weight"] = (hidden,)
        expected[f"{prefix}.emb_ln.bias"] = (hidden,)
        for i in range(num_layers):
            layer = f"{prefix}.encoder.layers.{i}"
            expected[f"{layer}.attn.Wqkv.weight"] = (3 * hidden, hidden)
            expected[f"{layer}.attn.out_proj.weight"] = (hidden, hidden)
            expected[f"{layer}.mlp.fc11.weight"] = (inner, hidden)
            expected[f"{layer}.mlp.fc12.weight"] = (inner, hidden)
            expected[f"{layer}.mlp.fc2.weight"] = (hidden, inner)
            for norm in ("norm1", "norm2"):
                expected[f"{layer}.{norm}.weight"] = (hidden,)
                expected[f"{layer}.{norm}.bias"] = (hidden,)
    return {**expected, **head_shapes(hidden)}


def head_shapes(hidden: int) -> dict[str, Shape]:
    """Both families' three two-layer MLP heads (Linear, activation, Linear)."""
    heads = {
        "first_stage_model.mlp": hidden,  # output = hidden: the second stage consumes it
        "second_stage_model.prompt_projection": NUM_PROMPT_ROWS * hidden,
        "second_stage_model.output_projection": hidden,
    }
    shapes: dict[str, Shape] = {}
    for prefix, out_size in heads.items():
        shapes[f"{prefix}.0.weight"] = (hidden, hidden)
        shapes[f"{prefix}.0.bias"] = (hidden,)
        shapes[f"{prefix}.2.weight"] = (out_size, hidden)
        shapes[f"{prefix}.2.bias"] = (out_size,)
    return shapes


def check_tensors(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, Shape], source: str
) -> None:
    """Every expected tensor is present, float and of its expected shape, else ValueError."""
    missing = [name for name in expected if name not in tensors]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ValueError(f"{source}: missing {len(missing)} tensor(s): {shown}")
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{source}: tensor {name} has shape {_fmt(tensor)}, expected {list(shape)}"
            )
        if not tensor.is_floating_point():
            raise ValueError(f"{source}: tensor {name} has non-float dtype {tensor.dtype}")


def _backbone(
    prefix: str,
    word_embeddings: torch.Tensor,
    num_layers: int,
    config: CDEConfig,
    get: Callable[[str], torch.Tensor],
) -> Backbone:
    layers = []
    for i in range(num_layers):
        layer = f"{prefix}.encoder.layers.{i}"
        wqkv = get(f"{layer}.attn.Wqkv.weight")
        hidden = wqkv.shape[1]
        layers.append(
            EncoderLayer(
                wqkv=wqkv,
                wq=wqkv[:hidden],
                wkv=wqkv[hidden:],
                out_proj=get(f"{layer}.attn.out_proj.weight"),
                fc1=torch.cat((get(f"{layer}.mlp.fc11.weight"), get(f"{layer}.mlp.fc12.weight"))),
                fc2=get(f"{layer}.mlp.fc2.weight"),
                norm1_weight=get(f"{layer}.norm1.weight"),
                norm1_bias=get(f"{layer}.norm1.bias"),
                norm2_weight=get(f"{layer}.norm2.weight"),
                norm2_bias=get(f"{layer}.norm2.bias"),
            )
        )
    return Backbone(
        word_embeddings=word_embeddings,
        token_type0=get(f"{prefix}.embeddings.token_type_embeddings.weight")[0],
        emb_ln_weight=get(f"{prefix}.emb_ln.weight"),
        emb_ln_bias=get(f"{prefix}.emb_ln.bias"),
        layers=tuple(layers),
        num_heads=config.num_heads,
        eps=config.layer_norm_eps,
    )


def _fmt(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)
