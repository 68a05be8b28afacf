"""Loading checkpoints: fallbacks, config options, and clear errors for broken ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from cde_model import EmbeddingModel, describe_model, load_model
from cde_model.random_checkpoint import write_random_checkpoint
from safetensors.torch import load_file, save_file
from support.paths import TINY_CHECKPOINT

SECOND = "second_stage_model.backbone"
FIRST = "first_stage_model.embedder"
TEXTS = ["search_query: who wrote hamlet", "search_document: Hamlet is a play.", ""]


@pytest.fixture(scope="module")
def reference() -> EmbeddingModel:
    return load_model(str(TINY_CHECKPOINT), device="cpu")


def variant(
    tmp_path: Path,
    config: Callable[[dict[str, Any]], object] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], object] | None = None,
    keep: tuple[str, ...] = ("tokenizer.json", "vocab.txt"),
) -> Path:
    """A copy of the tiny checkpoint with its config and tensors edited."""
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    raw = json.loads((TINY_CHECKPOINT / "config.json").read_text())
    if config:
        config(raw)
    (directory / "config.json").write_text(json.dumps(raw))
    weights = load_file(str(TINY_CHECKPOINT / "model.safetensors"))
    if tensors:
        tensors(weights)
    save_file(weights, str(directory / "model.safetensors"))
    for name in keep:
        shutil.copyfile(TINY_CHECKPOINT / name, directory / name)
    return directory


def embed(
    model: EmbeddingModel, dataset: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-stage, second-stage) outputs for TEXTS; stage 2 uses `dataset` or stage 1's."""
    ids, mask = model.tokenizer.encode(TEXTS)
    first = model.first_stage(ids, mask)
    if dataset is None:
        dataset = first[[i % len(TEXTS) for i in range(model.info.corpus_size)]]
    return first, model.second_stage(ids, mask, model.prepare_context(dataset))


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float rounding (kernels may round differently for differently placed data)."""
    assert (actual - expected).abs().max() <= 1e-5


# ------------------------------------------------------------------- missing pieces


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_model(str(tmp_path / "nowhere"))


def test_missing_config(tmp_path: Path) -> None:
    directory = variant(tmp_path)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model(str(directory))


def test_missing_weights(tmp_path: Path) -> None:
    directory = variant(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_model(str(directory))


def test_config_that_is_not_json(tmp_path: Path) -> None:
    directory = variant(tmp_path)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(str(directory))


def test_corrupt_weights_file(tmp_path: Path) -> None:
    directory = variant(tmp_path)
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(str(directory))


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    name = f"{SECOND}.encoder.layers.1.mlp.fc2.weight"
    directory = variant(tmp_path, tensors=lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"missing 1 tensor.*{name}"):
        load_model(str(directory))


def test_wrong_tensor_shape_is_named(tmp_path: Path) -> None:
    name = f"{FIRST}.encoder.layers.0.attn.Wqkv.weight"
    directory = variant(tmp_path, tensors=lambda t: t.update({name: torch.zeros(100, 64)}))
    with pytest.raises(ValueError, match=rf"{name} has shape \[100, 64\], expected \[192, 64\]"):
        load_model(str(directory))


def test_wrong_prompt_projection_shape(tmp_path: Path) -> None:
    name = "second_stage_model.prompt_projection.2.weight"
    directory = variant(tmp_path, tensors=lambda t: t.update({name: torch.zeros(256, 64)}))
    with pytest.raises(ValueError, match=r"prompt_projection\.2\.weight has shape"):
        load_model(str(directory))


def test_heads_must_divide_hidden_size(tmp_path: Path) -> None:
    directory = variant(tmp_path, config=lambda c: c["embedder_config"].update(n_head=5))
    with pytest.raises(ValueError, match="does not split into 5 heads"):
        load_model(str(directory))


# ------------------------------------------------------------------- unsupported settings


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"autoregressive_backbone": True}, "autoregressive_backbone=true is not supported"),
        ({"transductive_tokens_per_document": 4}, "transductive_tokens_per_document=4"),
        ({"architecture": "biencoder"}, "unsupported architecture"),
        ({"dataset_backbone": "bert-base-uncased"}, "dataset_backbone"),
        ({"transductive_corpus_size": 0}, "transductive_corpus_size must be a positive integer"),
        ({"disable_transductive_rotary_embedding": False}, "is not supported"),
    ],
)
def test_unsupported_settings_are_refused(
    tmp_path: Path, setting: dict[str, Any], message: str
) -> None:
    directory = variant(tmp_path, config=lambda c: c.update(setting))
    with pytest.raises(ValueError, match=message):
        load_model(str(directory))


def test_unsupported_backbone_setting_is_refused(tmp_path: Path) -> None:
    directory = variant(tmp_path, config=lambda c: c["embedder_config"].update(prenorm=True))
    with pytest.raises(ValueError, match="unsupported embedder_config prenorm=True"):
        load_model(str(directory))


# ------------------------------------------------------------------- fallbacks and options


def test_tokenizer_falls_back_to_the_bundled_vocabulary(
    tmp_path: Path, reference: EmbeddingModel
) -> None:
    model = load_model(str(variant(tmp_path, keep=())), device="cpu")
    for ours, theirs in zip(embed(model), embed(reference), strict=True):
        assert_same(ours, theirs)


def test_vocab_txt_alone_builds_the_same_tokenizer(
    tmp_path: Path, reference: EmbeddingModel
) -> None:
    model = load_model(str(variant(tmp_path, keep=("vocab.txt",))), device="cpu")
    texts = ["Héllo, WORLD! naïve café 中文", "search_document: tokenizers"]
    for ours, theirs in zip(
        model.tokenizer.encode(texts), reference.tokenizer.encode(texts), strict=True
    ):
        assert (ours == theirs).all()


def test_limit_layers_applies_to_the_second_stage_only(
    tmp_path: Path, reference: EmbeddingModel
) -> None:
    def drop_layer_1(tensors: dict[str, torch.Tensor]) -> None:
        for name in [n for n in tensors if n.startswith(f"{SECOND}.encoder.layers.1.")]:
            del tensors[name]

    limited = load_model(
        str(variant(tmp_path, config=lambda c: c.update(limit_layers=1), tensors=drop_layer_1)),
        device="cpu",
    )
    dataset = torch.randn(16, 64)
    first, second = embed(limited, dataset)
    reference_first, reference_second = embed(reference, dataset)
    assert_same(first, reference_first)
    assert (second - reference_second).abs().max() > 1e-3


def test_limit_layers_first_stage(tmp_path: Path, reference: EmbeddingModel) -> None:
    limited = load_model(
        str(variant(tmp_path, config=lambda c: c.update(limit_layers_first_stage=1))),
        device="cpu",
    )
    dataset = torch.randn(16, 64)
    first, second = embed(limited, dataset)
    reference_first, reference_second = embed(reference, dataset)
    assert (first - reference_first).abs().max() > 1e-3
    assert_same(second, reference_second)


def test_tied_token_embeddings_use_the_first_stage_table(tmp_path: Path) -> None:
    words = "embeddings.word_embeddings.weight"

    def untie(tensors: dict[str, torch.Tensor]) -> None:
        tensors[f"{SECOND}.{words}"] = tensors[f"{FIRST}.{words}"].clone()

    (tmp_path / "tied").mkdir()
    (tmp_path / "copied").mkdir()
    tied = load_model(
        str(
            variant(
                tmp_path / "tied",
                config=lambda c: c.update(transductive_tie_token_embeddings=True),
                tensors=lambda t: t.pop(f"{SECOND}.{words}"),
            )
        ),
        device="cpu",
    )
    copied = load_model(str(variant(tmp_path / "copied", tensors=untie)), device="cpu")
    dataset = torch.randn(16, 64)
    for ours, theirs in zip(embed(tied, dataset), embed(copied, dataset), strict=True):
        assert_same(ours, theirs)


def test_embedding_output_dim_is_ignored_as_published(
    tmp_path: Path, reference: EmbeddingModel
) -> None:
    model = load_model(
        str(variant(tmp_path, config=lambda c: c.update(embedding_output_dim=32))), device="cpu"
    )
    for ours, theirs in zip(embed(model), embed(reference), strict=True):
        assert_same(ours, theirs)


def test_random_tiny_checkpoint_loads_and_is_deterministic(tmp_path: Path) -> None:
    a = load_model(str(write_random_checkpoint(tmp_path / "a", "tiny", seed=7)), device="cpu")
    b = load_model(str(write_random_checkpoint(tmp_path / "b", "tiny", seed=7)), device="cpu")
    c = load_model(str(write_random_checkpoint(tmp_path / "c", "tiny", seed=8)), device="cpu")
    assert a.info.fingerprint == b.info.fingerprint != c.info.fingerprint
    second = embed(a)[1]
    assert torch.isfinite(second).all() and second.norm(dim=1).min() > 1e-3
    assert_same(second, embed(b)[1])


@pytest.mark.parametrize("model", [str(TINY_CHECKPOINT), "demo"])
def test_description_matches_the_loaded_model(model: str) -> None:
    loaded = load_model(model, device="cpu")
    description = describe_model(model, device="cpu")
    assert description.info == loaded.info
    assert description.tokenizer.max_tokens == loaded.tokenizer.max_tokens
    texts = ["who wrote hamlet", "x " * 600]
    for ours, theirs in zip(
        description.tokenizer.encode(texts), loaded.tokenizer.encode(texts), strict=True
    ):
        assert (ours == theirs).all()


def test_description_needs_no_torch() -> None:
    code = (
        "import sys; from cde_model import describe_model; "
        f"d = describe_model({str(TINY_CHECKPOINT)!r}); describe_model('demo'); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(d.info.hidden_size)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == load_model(str(TINY_CHECKPOINT), device="cpu").info.hidden_size
