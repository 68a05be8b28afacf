"""Start-up with a cde-small-v2 snapshot as the hub ships it (no tokenizer files): `cde serve`,
`cde triton` and the launcher refuse it before Triton starts, with the documented message;
the `tokenizer` setting (CDE_TOKENIZER, --tokenizer) supplies the files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cde_server.triton.environment import TritonSetupError
from cde_server.triton.launcher import TritonProcess, check_tokenizer
from cde_server.triton.settings import TritonSettings
from support.paths import TINY_CHECKPOINT, V2_TINY_CHECKPOINT
from support.triton_fixtures import tiny_triton_settings
from support.v2_golden import copy_without_tokenizer

EXIT_MISCONFIGURED = 2


@pytest.fixture
def snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The v2 tiny checkpoint without tokenizer files; no CDE_TOKENIZER in the environment."""
    monkeypatch.delenv("CDE_TOKENIZER", raising=False)
    return copy_without_tokenizer(tmp_path / "snapshot")


def assert_documented_message(message: str, snapshot: Path) -> None:
    """The message says which files to copy from where, or which setting to use."""
    assert "no tokenizer.json in" in message and str(snapshot.resolve()) in message
    assert "answerdotai/ModernBERT-base" in message and "CDE_TOKENIZER" in message
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert name in message


def test_launcher_refuses_before_starting_triton(tmp_path: Path, snapshot: Path) -> None:
    process = TritonProcess(tiny_triton_settings(tmp_path / "cache", model=str(snapshot)))
    with pytest.raises(TritonSetupError) as caught:
        process.start()
    assert_documented_message(str(caught.value), snapshot)
    assert process.pid is None  # nothing was started


def test_stray_environment_variable_is_not_used_when_the_setting_says_none(
    tmp_path: Path, snapshot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tiny_triton_settings(tmp_path / "cache", model=str(snapshot), tokenizer=None)
    monkeypatch.setenv("CDE_TOKENIZER", str(V2_TINY_CHECKPOINT))
    with pytest.raises(TritonSetupError):
        TritonProcess(settings).start()


def test_tokenizer_setting_supplies_the_files(
    snapshot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_tokenizer(str(snapshot), str(V2_TINY_CHECKPOINT))
    check_tokenizer(str(TINY_CHECKPOINT), None)  # v1: the tokenizer is optional
    check_tokenizer("demo", None)
    monkeypatch.setenv("CDE_TOKENIZER", str(V2_TINY_CHECKPOINT))
    assert TritonSettings().tokenizer == V2_TINY_CHECKPOINT
    monkeypatch.setenv("CDE_TOKENIZER", "")
    assert TritonSettings().tokenizer is None


def test_missing_tokenizer_directory(tmp_path: Path, snapshot: Path) -> None:
    settings = tiny_triton_settings(
        tmp_path / "cache", model=str(snapshot), tokenizer=tmp_path / "nowhere"
    )
    with pytest.raises(TritonSetupError, match="tokenizer directory not found"):
        TritonProcess(settings).start()


def run_cde(*args: str) -> subprocess.CompletedProcess[str]:
    """`cde ARGS...` in a fresh interpreter (cde serve configures the process's logging)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CDE_TOKENIZER", "CDE_TRITON_URL")}
    code = "import sys; from cde_server.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["serve", "triton"])
def test_cli_start_up_fails_with_the_documented_message(
    tmp_path: Path, snapshot: Path, command: str
) -> None:
    options = ["--port", "0", "--store", f"sqlite://{tmp_path / 'store.db'}"]
    result = run_cde(command, "--model", str(snapshot), *(options if command == "serve" else []))
    assert result.returncode == EXIT_MISCONFIGURED, result.stderr
    assert f"cde {command}: no tokenizer.json in" in result.stderr
    assert_documented_message(result.stderr, snapshot)
    assert "Traceback" not in result.stderr
