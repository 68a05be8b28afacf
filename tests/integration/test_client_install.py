"""`pip install .` into a fresh venv gives a working client with the base dependencies only."""

from __future__ import annotations

from pathlib import Path

from support.fresh_install import install_fresh, run

HEAVY_PACKAGES = (
    "torch", "transformers", "tritonclient", "pytriton", "pydantic", "redis", "tqdm",
    "fastapi", "uvicorn", "langchain_core", "llama_index", "openai",
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


def test_fresh_install_with_base_dependencies_only(tmp_path: Path) -> None:
    bin_dir = install_fresh(tmp_path)
    python, cde = bin_dir / "python", bin_dir / "cde"

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
