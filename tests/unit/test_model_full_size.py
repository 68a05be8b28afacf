"""A random checkpoint with the real cde-small-v1 shapes (about 1.1 GB) loads and runs.

It is written once per module into a temporary directory (a few seconds); its config has no
embedder_config, so the nomic-bert-2048 defaults are exercised. Forwards stay tiny.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cde_model import EmbeddingModel, load_model
from cde_model.random_checkpoint import write_random_checkpoint
from cde_server.cli.main import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("full"), "full", seed=0)


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> EmbeddingModel:
    return load_model(str(checkpoint), device="cpu")


def test_full_size_shapes(model: EmbeddingModel) -> None:
    info = model.info
    assert (info.hidden_size, info.corpus_size, info.max_tokens) == (768, 512, 512)


def test_full_size_forward(model: EmbeddingModel) -> None:
    ids, mask = model.tokenizer.encode(["search_query: what is cde", "search_document: x y z"])
    dataset = model.first_stage(ids, mask)
    assert dataset.shape == (2, 768) and torch.isfinite(dataset).all()
    generator = torch.Generator().manual_seed(0)
    context = model.prepare_context(torch.randn(512, 768, generator=generator))
    assert context.nbytes == 520 * 4 * 768 * 4  # layer-0 input and q/k/v of N + 8 rows
    together = model.second_stage(ids, mask, context)
    assert together.shape == (2, 768) and torch.isfinite(together).all()


def test_cde_encode_runs_on_full_size(checkpoint: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a query\n")
    context = tmp_path / "ctx.txt"
    context.write_text("one context document, oversampled to 512\n")
    output = tmp_path / "out.npy"
    status = main(["encode", "--model", str(checkpoint), "--input-file", str(source),
                   "--context-file", str(context), "--output", str(output)])  # fmt: skip
    assert status == 0
    embeddings = np.load(output)
    assert embeddings.shape == (1, 768)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
