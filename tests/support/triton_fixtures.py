"""Pytest plugin: a real tritonserver (CPU) on free ports serving the tiny CDE checkpoint.

Registered in tests/conftest.py (`pytest_plugins`). Fixtures:
- `triton_process`: the session's started `TritonProcess` (stopped at the end of the session);
- `triton_grpc_url`: its gRPC address, host:port;
- `v2_triton_process`: a second one serving the cde-small-v2 tiny checkpoint, started only when
  a test asks for it (same model names; the family comes from the checkpoint); its tokenizer
  comes from the `tokenizer` setting, as for the published snapshot;
- `demo_triton_process`: one serving the offline demo model (all-MiniLM-L6-v2), started only
  when a test asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cde_server.triton.launcher import TritonProcess, free_ports
from cde_server.triton.settings import TritonSettings

__all__ = ["TINY_CHECKPOINT", "V2_TINY_CHECKPOINT", "free_ports", "tiny_triton_settings"]

from support.paths import TINY_CHECKPOINT, V2_TINY_CHECKPOINT
from support.v2_golden import copy_without_tokenizer


def tiny_triton_settings(cache_dir: Path, **overrides: object) -> TritonSettings:
    """Settings for a CPU Triton serving the tiny checkpoint on free ports (`model=` for
    another)."""
    grpc_port, http_port, metrics_port = free_ports(3)
    values: dict[str, object] = {
        "model": str(TINY_CHECKPOINT),
        "dtype": "float32",
        "triton_device": "cpu",
        "triton_grpc_port": grpc_port,
        "triton_http_port": http_port,
        "triton_metrics_port": metrics_port,
        "triton_cache_dir": cache_dir,
        "triton_startup_timeout_s": 240.0,
        "triton_exit_timeout_s": 5,
    }
    values.update(overrides)
    return TritonSettings.model_validate(values)


@pytest.fixture(scope="session")
def triton_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """A started tritonserver serving the tiny checkpoint (CPU configs)."""
    settings = tiny_triton_settings(tmp_path_factory.mktemp("triton-cache"))
    with TritonProcess(settings) as process:
        yield process


@pytest.fixture(scope="session")
def triton_grpc_url(triton_process: TritonProcess) -> str:
    """host:port of the session's tritonserver gRPC endpoint."""
    return triton_process.grpc_url


@pytest.fixture(scope="session")
def v2_triton_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """A started tritonserver serving the cde-small-v2 tiny checkpoint (CPU configs), laid out
    as the published snapshot is: a copy without tokenizer files, whose tokenizer comes from
    the `tokenizer` setting (CDE_TOKENIZER). Same model name and fingerprint as the fixture."""
    snapshot = copy_without_tokenizer(tmp_path_factory.mktemp("v2-snapshot"))
    settings = tiny_triton_settings(
        tmp_path_factory.mktemp("triton-v2-cache"),
        model=str(snapshot),
        tokenizer=V2_TINY_CHECKPOINT,
    )
    with TritonProcess(settings) as process:
        yield process


@pytest.fixture(scope="session")
def demo_triton_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """A started tritonserver serving the offline demo model (CPU configs)."""
    settings = tiny_triton_settings(tmp_path_factory.mktemp("triton-demo-cache"), model="demo")
    with TritonProcess(settings) as process:
        yield process
