"""Loading cde-small-v2 checkpoints: family detection, ModernBERT-base defaults at full size,
the tokenizer lookup and its error, and clear errors for unsupported or broken checkpoints."""

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
from cde_model.cde_v2 import CDEV2Model
from cde_model.config_v2 import MODERNBERT_BASE_SETTINGS
from cde_model.random_checkpoint import write_random_checkpoint
from cde_model.tokenizer_v2 import TOKENIZER_ENV
from cde_server.cli.main import main
from safetensors.torch import load_file, save_file
from support.paths import TINY_CHECKPOINT, V2_TINY_CHECKPOINT

FIRST = "first_stage_model.embedder"
TEXTS = ["search_query: what is cde", "search_document: x y: z", ""]


def variant(
    tmp_path: Path,
    config: Callable[[dict[str, Any]], object] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], object] | None = None,
    keep: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
) -> Path:
    """A copy of the tiny v2 fixture with its config and tensors edited."""
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    raw = json.loads((V2_TINY_CHECKPOINT / "config.json").read_text())
    if config:
        config(raw)
    (directory / "config.json").write_text(json.dumps(raw))
    if tensors:
        weights = load_file(str(V2_TINY_CHECKPOINT / "model.safetensors"))
        tensors(weights)
        save_file(weights, str(directory / "model.safetensors"))
    else:
        shutil.copyfile(V2_TINY_CHECKPOINT / "model.safetensors", directory / "model.safetensors")
    for name in keep:
        shutil.copyfile(V2_TINY_CHECKPOINT / name, directory / name)
    return directory


def embed(model: EmbeddingModel) -> torch.Tensor:
    ids, mask = model.tokenizer.encode(TEXTS)
    dataset = model.first_stage(ids, mask)
    rows = dataset[[i % len(TEXTS) for i in range(model.info.corpus_size)]]
    return model.second_stage(ids, mask, model.prepare_context(rows))


# ------------------------------------------------------------------- family


def test_the_family_comes_from_config_json() -> None:
    assert describe_model(str(V2_TINY_CHECKPOINT)).info.family == "v2"
    assert describe_model(str(TINY_CHECKPOINT)).info.family == "v1"
    assert describe_model("demo").info.family == "demo"
    assert isinstance(load_model(str(V2_TINY_CHECKPOINT), device="cpu"), CDEV2Model)


def test_describe_model_does_not_import_torch() -> None:
    code = (
        "import sys; from cde_model import describe_model; "
        f"d = describe_model({str(V2_TINY_CHECKPOINT)!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "print(d.info.family, d.info.hidden_size, d.info.fingerprint)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    info = load_model(str(V2_TINY_CHECKPOINT), device="cpu").info
    assert result.stdout.split() == ["v2", "64", info.fingerprint]


# ------------------------------------------------------------------- full size


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("v2full"), "full", family="v2")


def test_a_full_size_checkpoint_uses_the_modernbert_base_values(full_checkpoint: Path) -> None:
    assert "embedder_config" not in json.loads((full_checkpoint / "config.json").read_text())
    model = load_model(str(full_checkpoint), device="cpu")
    assert isinstance(model, CDEV2Model)
    info = model.info
    assert (info.family, info.hidden_size, info.corpus_size, info.max_tokens) == (
        "v2", 768, 512, 512,
    )  # fmt: skip
    config = model.backbone_config
    assert (config.num_hidden_layers, config.num_attention_heads) == (22, 12)
    assert (config.intermediate_size, config.vocab_size) == (1152, 50368)
    assert (config.local_attention, config.norm_eps) == (128, 1e-5)
    layer_types, rope = config.layer_types, config.rope_parameters
    assert layer_types is not None and rope is not None
    assert [i for i, t in enumerate(layer_types) if t == "full_attention"] == list(range(0, 22, 3))
    assert rope["full_attention"]["rope_theta"] == 160000.0
    assert rope["sliding_attention"]["rope_theta"] == 10000.0
    assert config.pad_token_id == MODERNBERT_BASE_SETTINGS["pad_token_id"]
    ids, mask = model.tokenizer.encode(["search_query: what is cde", "search_document: x"])
    dataset = model.first_stage(ids, mask)
    assert dataset.shape == (2, 768) and bool(torch.isfinite(dataset).all())
    context = model.prepare_context(
        torch.randn(512, 768, generator=torch.Generator().manual_seed(0))
    )
    assert context.nbytes == 520 * 768 * 4
    embeddings = model.second_stage(ids, mask, context)
    assert embeddings.shape == (2, 768) and bool(torch.isfinite(embeddings).all())


# ------------------------------------------------------------------- tokenizer


def test_a_snapshot_without_tokenizer_files_says_what_to_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKENIZER_ENV, raising=False)
    directory = variant(tmp_path, keep=())
    for load in (describe_model, load_model):
        with pytest.raises(FileNotFoundError) as error:
            load(str(directory))
        message = str(error.value)
        assert "answerdotai/ModernBERT-base" in message
        assert "tokenizer.json" in message and str(directory) in message
        assert TOKENIZER_ENV in message


def test_the_tokenizer_can_come_from_cde_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = variant(tmp_path, keep=())
    monkeypatch.setenv(TOKENIZER_ENV, str(V2_TINY_CHECKPOINT))
    model = load_model(str(directory), device="cpu")
    reference = load_model(str(V2_TINY_CHECKPOINT), device="cpu")
    assert (embed(model) - embed(reference)).abs().max() <= 1e-6
    missing = tmp_path / "nothing-here"
    monkeypatch.setenv(TOKENIZER_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_model(str(directory), device="cpu")


def test_a_tokenizer_beside_the_checkpoint_wins_over_cde_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKENIZER_ENV, str(tmp_path / "unused"))
    assert load_model(str(V2_TINY_CHECKPOINT), device="cpu").info.family == "v2"


# ------------------------------------------------------------------- unsupported settings


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"autoregressive_backbone": True}, "autoregressive_backbone=True is not supported"),
        ({"transductive_tokens_per_document": 2}, "transductive_tokens_per_document=2"),
        ({"limit_layers": 2}, "limit_layers=2 is not supported"),
        ({"limit_layers_first_stage": 2}, "limit_layers_first_stage=2"),
        ({"transductive_tie_token_embeddings": True}, "transductive_tie_token_embeddings"),
        ({"pool_ignore_contextual_tokens": False}, "pool_ignore_contextual_tokens"),
        ({"architecture": "biencoder"}, "unsupported architecture"),
        ({"dataset_backbone": "bert-base-uncased"}, "dataset_backbone"),
        ({"transductive_corpus_size": 0}, "transductive_corpus_size must be a positive"),
    ],
)
def test_unsupported_settings_are_refused(
    tmp_path: Path, edit: dict[str, Any], message: str
) -> None:
    directory = variant(tmp_path, config=lambda c: c.update(edit))
    for load in (describe_model, load_model):
        with pytest.raises(ValueError, match=message):
            load(str(directory))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"norm_bias": True}, "norm_bias=True"),
        ({"hidden_activation": "silu"}, "hidden_activation='silu'"),
        ({"model_type": "bert"}, "model_type 'bert' is not modernbert"),
        ({"num_attention_heads": 5}, "does not split into 5 heads"),
        ({"num_hidden_layers": 3}, "more than the 3 layers"),
    ],
)
def test_unsupported_backbone_settings_are_refused(
    tmp_path: Path, edit: dict[str, Any], message: str
) -> None:
    directory = variant(tmp_path, config=lambda c: c["embedder_config"].update(edit))
    with pytest.raises(ValueError, match=message):
        load_model(str(directory), device="cpu")


def test_missing_and_misshapen_tensors_are_named(tmp_path: Path) -> None:
    name = f"{FIRST}.layers.2.attn_norm.weight"
    directory = variant(tmp_path, tensors=lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"missing 1 tensor.*{name}"):
        load_model(str(directory), device="cpu")
    shutil.rmtree(directory)
    wqkv = f"{FIRST}.layers.0.attn.Wqkv.weight"
    directory = variant(tmp_path, tensors=lambda t: t.update({wqkv: torch.zeros(100, 64)}))
    with pytest.raises(ValueError, match=rf"{wqkv} has shape \[100, 64\], expected \[192, 64\]"):
        load_model(str(directory), device="cpu")


def test_pooling_the_instruction_is_a_config_choice(tmp_path: Path) -> None:
    directory = variant(tmp_path, config=lambda c: c.update(pool_ignore_instruction_tokens=False))
    reference = load_model(str(V2_TINY_CHECKPOINT), device="cpu")
    pooled_prompt = load_model(str(directory), device="cpu")
    assert (embed(pooled_prompt) - embed(reference)).abs().max() > 1e-3


# ------------------------------------------------------------------- random checkpoints


def test_make_checkpoint_writes_a_v2_checkpoint(tmp_path: Path) -> None:
    directory = tmp_path / "tiny-v2"
    assert main(["make-checkpoint", str(directory), "--family", "v2", "--seed", "3"]) == 0
    model = load_model(str(directory), device="cpu")
    assert (model.info.family, model.info.hidden_size, model.info.corpus_size) == ("v2", 64, 16)
    assert bool(torch.isfinite(embed(model)).all())
    same = write_random_checkpoint(tmp_path / "same", "tiny", seed=3, family="v2")
    other = write_random_checkpoint(tmp_path / "other", "tiny", seed=4, family="v2")
    assert describe_model(str(same)).info.fingerprint == model.info.fingerprint
    assert describe_model(str(other)).info.fingerprint != model.info.fingerprint


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model family 'v3'"):
        write_random_checkpoint(tmp_path, "tiny", family="v3")
