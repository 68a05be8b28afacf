"""A copy of the source tree installed non-editable into a fresh venv, as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from support.paths import REPO_ROOT

# What a source distribution holds; without caches, build outputs or generated protobuf code.
SOURCE_ENTRIES = (
    "pyproject.toml",
    "setup.py",
    "README.md",
    "LICENSE",
    "proto",
    "client",
    "server",
    "model",
    "model_repository",
)
NOT_SOURCE = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", "build", "dist", ".*_cache",
    "*_pb2.py", "*_pb2_grpc.py", "*_pb2.pyi", "*_pb2_grpc.pyi",
)  # fmt: skip


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output (9 minutes at most)."""
    result: subprocess.CompletedProcess[str] = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=540,
        **kwargs,  # type: ignore[call-overload]
    )
    return result


def install_fresh(tmp_path: Path, extras: str = "") -> Path:
    """Copy the source to tmp_path/src, `pip install 'src[extras]'` into tmp_path/venv; the
    venv's bin directory."""
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCE_ENTRIES:
        entry = REPO_ROOT / name
        if entry.is_dir():
            shutil.copytree(entry, source / name, ignore=NOT_SOURCE)
        elif entry.exists():
            shutil.copy2(entry, source / name)
    venv = tmp_path / "venv"
    created = run([sys.executable, "-m", "venv", venv])
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    target = f"{source}[{extras}]" if extras else str(source)
    installed = run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", target]
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv / "bin"
