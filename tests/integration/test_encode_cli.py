"""`cde encode` and `cde make-checkpoint`: the file contract, golden reproduction, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cde_server.cli.main import main
from safetensors.torch import load_file, save_file
from support.paths import TINY_CHECKPOINT

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TINY_CHECKPOINT / "golden.json").read_text())
    return data


def write_lines(path: Path, lines: list[str], final_newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""), encoding="utf-8")
    return path


def encode(*args: str | Path) -> int:
    return main(["encode", *map(str, args)])


def normalized(rows: list[list[float]]) -> npt.NDArray[np.float64]:
    array = np.asarray(rows, dtype=np.float64)
    norms: npt.NDArray[np.float64] = np.linalg.norm(array, axis=1, keepdims=True)
    return array / norms


def test_reproduces_golden_documents_normalized(
    tmp_path: Path, golden: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    context = write_lines(tmp_path / "ctx.txt", golden["context_texts"])
    documents = write_lines(tmp_path / "docs.txt", golden["documents"])  # last one is ""
    output = tmp_path / "docs.npy"
    status = encode("--model", TINY_CHECKPOINT, "--input-file", documents,
                    "--context-file", context, "--output", output)  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0 and captured.out == ""
    embeddings = np.load(output)
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, 64)
    np.testing.assert_allclose(embeddings, normalized(golden["document_embeddings"]), atol=2e-5)


def test_reproduces_golden_queries_raw(tmp_path: Path, golden: dict[str, Any]) -> None:
    context = write_lines(tmp_path / "ctx.txt", golden["alt_context_texts"])
    queries = write_lines(tmp_path / "queries.txt", golden["queries"])
    output = tmp_path / "queries.npy"
    status = encode("--model", TINY_CHECKPOINT, "--input-file", queries, "--context-file",
                    context, "--output", output, "--prompt", "query", "--no-normalize",
                    "--batch-size", "3")  # fmt: skip
    assert status == 0
    want = np.asarray(golden["alt_query_embeddings"])
    assert np.abs(np.load(output) - want).max() <= golden["tolerance"]["max_abs"]


@pytest.mark.parametrize(
    ("content", "rows"),
    [("a\n\nb\n", 3), ("a\nb", 2), ("a\n\n", 2), ("\n", 1), ("", 0), ("a\r\nb\r\n", 2)],
)
def test_one_text_per_line(tmp_path: Path, content: str, rows: int) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(content.encode())
    output = tmp_path / "out.npy"
    assert encode("--model", TINY_CHECKPOINT, "--input-file", source, "--output", output) == 0
    assert np.load(output).shape == (rows, 64)


def test_empty_line_is_the_embedding_of_the_bare_prefix(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.txt", ["", "x"])
    output = tmp_path / "out.npy"
    assert encode("--model", TINY_CHECKPOINT, "--input-file", source, "--output", output) == 0
    assert np.abs(np.load(output)[0] - np.load(output)[1]).max() > 1e-3


def assert_one_line_error(status: int, capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.startswith("cde encode: error:")]
    assert len(lines) == 1, captured.err
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = encode("--model", TINY_CHECKPOINT, "--input-file", tmp_path / "none.txt",
                    "--output", tmp_path / "o.npy")  # fmt: skip
    assert_one_line_error(status, capsys, "file not found", "none.txt")


def test_missing_context_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "in.txt", ["x"])
    status = encode("--model", TINY_CHECKPOINT, "--input-file", source, "--context-file",
                    tmp_path / "ctx.txt", "--output", tmp_path / "o.npy")  # fmt: skip
    assert_one_line_error(status, capsys, "file not found", "ctx.txt")


def test_empty_context_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "in.txt", ["x"])
    context = tmp_path / "ctx.txt"
    context.write_text("")
    status = encode("--model", TINY_CHECKPOINT, "--input-file", source, "--context-file",
                    context, "--output", tmp_path / "o.npy")  # fmt: skip
    assert_one_line_error(status, capsys, "has no lines")


def test_bad_checkpoint_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "in.txt", ["x"])
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copyfile(TINY_CHECKPOINT / "config.json", broken / "config.json")
    status = encode("--model", broken, "--input-file", source, "--output", tmp_path / "o.npy")
    assert_one_line_error(status, capsys, "model.safetensors")


def test_wrong_tensor_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "in.txt", ["x"])
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copyfile(TINY_CHECKPOINT / "config.json", broken / "config.json")
    tensors = load_file(str(TINY_CHECKPOINT / "model.safetensors"))
    name = "second_stage_model.output_projection.2.weight"
    tensors[name] = tensors[name][:, :32].contiguous()
    save_file(tensors, str(broken / "model.safetensors"))
    status = encode("--model", broken, "--input-file", source, "--output", tmp_path / "o.npy")
    assert_one_line_error(status, capsys, name, "has shape [64, 32], expected [64, 64]")


def test_unknown_prompt_lists_the_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "in.txt", ["x"])
    status = encode("--model", TINY_CHECKPOINT, "--input-file", source,
                    "--output", tmp_path / "o.npy", "--prompt", "passage")  # fmt: skip
    assert_one_line_error(status, capsys, "'passage'", "query, document, classification")


def test_missing_output_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "in.txt", ["x"])
    status = encode("--model", TINY_CHECKPOINT, "--input-file", source,
                    "--output", tmp_path / "no" / "o.npy")  # fmt: skip
    assert_one_line_error(status, capsys, "output directory not found")


def test_process_contract_stdout_empty_and_no_traceback(tmp_path: Path) -> None:
    """As a real process: success writes nothing to stdout; an error is one stderr line."""
    source = write_lines(tmp_path / "in.txt", ["hello", "world"])
    command = [sys.executable, "-m", "cde_server.cli.main", "encode", "--model",
               str(TINY_CHECKPOINT), "--input-file", str(source), "--prompt", "clustering",
               "--dtype", "bfloat16"]  # fmt: skip
    ok = subprocess.run([*command, "--output", str(tmp_path / "o.npy")],
                        capture_output=True, text=True, check=False)  # fmt: skip
    assert ok.returncode == 0 and ok.stdout == "", ok.stderr
    assert "encode" in ok.stderr  # the progress bars
    assert np.load(tmp_path / "o.npy").shape == (2, 64)
    failed = subprocess.run([*command, "--output", str(tmp_path / "missing" / "o.npy")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.strip().count("\n") == 0 and "Traceback" not in failed.stderr


def test_demo_model(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.txt", ["who wrote hamlet", ""])
    context = write_lines(tmp_path / "ctx.txt", ["Hamlet is a play.", "Cells have mitochondria."])
    output = tmp_path / "o.npy"
    status = encode("--model", "demo", "--input-file", source, "--context-file", context,
                    "--output", output, "--prompt", "query")  # fmt: skip
    assert status == 0
    embeddings = np.load(output)
    assert embeddings.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_make_checkpoint_then_encode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "random"
    assert main(["make-checkpoint", str(checkpoint), "--size", "tiny", "--seed", "5"]) == 0
    assert {p.name for p in checkpoint.iterdir()} >= {"config.json", "model.safetensors",
                                                       "tokenizer.json", "vocab.txt"}  # fmt: skip
    source = write_lines(tmp_path / "in.txt", ["x", "y"])
    output = tmp_path / "o.npy"
    assert encode("--model", checkpoint, "--input-file", source, "--output", output) == 0
    assert np.isfinite(np.load(output)).all()
    capsys.readouterr()
    assert main(["make-checkpoint", str(checkpoint)]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err
