"""`pip install .` into a fresh venv gives a working client with the base dependencies only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY_PACKAGES = (
    "torch", "transformers", "tritonclient", "pytriton", "pydantic", "redis", "tqdm",
    "fastapi", "uvicorn", "langchain_core", "llama_index", "openai",
)  # fmt: skip
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
)
NOT_SOURCE = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", "build", "dist", ".*_cache",
    "*_pb2.py", "*_pb2_grpc.py", "*_pb2.pyi", "*_pb2_grpc.pyi",
)  # fmt: skip

CHECK = """
import importlib.util, sys
from pathlib import Path
import cde_client
from cde_client import AsyncCdeClient, CdeClient
heavy = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
assert not heavy, f"installed without being asked for: {heavy}"
assert (Path(cde_client.__file__).parent / "py.typed").exists(), "py.typed not shipped"
with CdeClient("127.0.0.1:1") as client:
    pass
print("client ok")
"""


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=540,
        **kwargs,  # type: ignore[call-overload]
    )
    return result


def test_fresh_install_with_base_dependencies_only(tmp_path: Path) -> None:
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
    python, cde = venv / "bin" / "python", venv / "bin" / "cde"

    installed = run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source]
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    checked = run([python, "-c", CHECK, *HEAVY_PACKAGES], cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "client ok" in checked.stdout

    for argv in (["--help"], ["context", "--help"], ["embed", "--help"]):
        helped = run([cde, *argv], cwd=tmp_path)
        assert helped.returncode == 0, helped.stderr
        assert "usage: cde" in helped.stdout
    listed = run([cde, "--help"], cwd=tmp_path).stdout
    assert all(command in listed for command in ("context", "prompt", "embed", "search"))

    failed = run(
        [cde, "context", "list", "--address", "127.0.0.1:1", "--timeout", "1"], cwd=tmp_path
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("cde: error: ") and "UNAVAILABLE" in failed.stderr
