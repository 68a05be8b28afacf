"""`pip install '.[gateway]'` gives a gateway without torch or Triton that serves embeddings
from an external Triton (started from the full install), and a wheel that ships
model_repository/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cde_client import CdeClient
from support.fresh_install import install_fresh, run
from support.process_fixtures import GatewayProcess

ABSENT = """
import importlib.util, sys
present = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
assert not present, f"the gateway install has {present}"
from cde_server.triton.settings import DEFAULT_MODEL_REPOSITORY
assert (DEFAULT_MODEL_REPOSITORY / "cde_second_stage" / "config.pbtxt").is_file()
assert "site-packages" in str(DEFAULT_MODEL_REPOSITORY), DEFAULT_MODEL_REPOSITORY
print("gateway install ok")
"""


def test_gateway_extra_serves_without_torch(tmp_path: Path, triton_grpc_url: str) -> None:
    bin_dir = install_fresh(tmp_path, "gateway")
    checked = run(
        [bin_dir / "python", "-c", ABSENT, "torch", "transformers", "pytriton", "safetensors"],
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "gateway install ok" in checked.stdout

    alone = run(
        [bin_dir / "cde", "serve", "--port", "0"],
        cwd=tmp_path,
        env={
            "PATH": str(bin_dir),
            "HOME": str(tmp_path),
            "CDE_STORE": f"sqlite:///{tmp_path}/a.db",
            "CDE_METRICS_PORT": "off",
        },
    )
    assert alone.returncode == 2, alone.stdout + alone.stderr
    assert "set CDE_TRITON_URL to an external Triton" in alone.stderr

    gateway = GatewayProcess(
        {"triton_url": triton_grpc_url, "store": f"sqlite:///{tmp_path / 'cde.db'}"},
        cde=bin_dir / "cde",
    )
    try:
        gateway.start()
        with CdeClient(gateway.address) as client:
            client.create_context_set("docs", ["alpha", "beta", "gamma"], replace=True)
            result = client.embed_queries(["who wrote hamlet"], context="docs")
        assert result.embeddings.shape[0] == 1
        assert np.isclose(np.linalg.norm(result.embeddings[0]), 1.0, atol=1e-5)
    finally:
        gateway.stop()
