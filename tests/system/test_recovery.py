"""Failure recovery and local hardening of `cde serve` with its embedded Triton (issue 16):
Triton or one of its stubs killed or paused, health that follows the pool at once, shared
memory and ports closed to other local users."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
from cde_client import CdeClient, HealthStatus, Unavailable
from cde_server.stores.sqlite import SqliteStore
from cde_server.triton.launcher import SHM_DIR, SHM_PREFIX, TritonProcess, free_ports
from support.paths import TINY_CHECKPOINT
from support.probes import health, wait_for
from support.process_fixtures import GatewayProcess, GatewayProcessFactory
from support.triton_fixtures import tiny_triton_settings

NOBODY = 65534
RECOVERY_S = 120.0


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`cde serve` with its own embedded Triton (the `make run` setup) on free ports."""
    directory = tmp_path_factory.mktemp("embedded")
    grpc_port, http_port, metrics_port = free_ports(3)
    gateway = GatewayProcess(
        {
            "model": str(TINY_CHECKPOINT),
            "triton_device": "cpu",
            "triton_grpc_port": str(grpc_port),
            "triton_http_port": str(http_port),
            "triton_metrics_port": str(metrics_port),
            "triton_cache_dir": str(directory / "triton-cache"),
            "triton_startup_timeout_s": "240",
            "triton_exit_timeout_s": "5",
            "store": f"sqlite:///{directory / 'cde.db'}",
            "health_interval_s": "0.5",
        }
    )
    gateway.start(timeout_s=300)
    wait_for(lambda: health(gateway.address) == HealthStatus.SERVING, 60, "SERVING")
    yield gateway
    gateway.stop(timeout_s=60)


def tritonserver(gateway: GatewayProcess) -> psutil.Process:
    """The gateway's tritonserver child."""
    for child in psutil.Process(gateway.pid).children():
        if child.name() == "tritonserver":
            return child
    raise AssertionError(f"no tritonserver child; output:\n{gateway.output()}")


def stub_of(gateway: GatewayProcess, model: str) -> psutil.Process:
    """The python-backend stub serving `model`."""
    for child in tritonserver(gateway).children():
        if model in " ".join(child.cmdline()):
            return child
    raise AssertionError(f"no stub for {model}")


def embeds(address: str) -> bool:
    """Whether one query embeds now (no client retries)."""
    try:
        with CdeClient(address, retry=False, timeout=10) as client:
            result = client.embed_queries(["who wrote hamlet"])
        return bool(np.isfinite(result.embeddings).all())
    except Exception:
        return False


def test_triton_ports_ask_for_the_secret_and_expose_only_grpc(embedded: GatewayProcess) -> None:
    settings = embedded.settings
    direct = triton_grpc.InferenceServerClient(f"127.0.0.1:{settings['triton_grpc_port']}")
    with pytest.raises(Exception, match=r"(?i)unavailable|restricted|header|permission"):
        direct.is_server_ready()
    for port in (settings["triton_http_port"], settings["triton_metrics_port"]):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()
    assert embeds(embedded.address)  # the gateway has the secret


def test_request_text_in_shared_memory_is_private(embedded: GatewayProcess) -> None:
    assert embeds(embedded.address)
    regions = sorted(SHM_DIR.glob(f"{SHM_PREFIX}{embedded.pid}_*"))
    assert regions, "the embedded Triton made no shared-memory regions"
    for region in regions:
        assert region.stat().st_mode & 0o077 == 0, f"{region} is {oct(region.stat().st_mode)}"
    read = subprocess.run(
        ["cat", str(regions[0])], user=NOBODY, group=NOBODY, capture_output=True, timeout=10
    )
    assert read.returncode != 0 and b"Permission denied" in read.stderr


def test_a_killed_stub_is_reloaded_and_never_answers_internal(embedded: GatewayProcess) -> None:
    assert embeds(embedded.address)
    stub_of(embedded, "cde_second_stage").kill()
    codes = []
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline:
        try:
            with CdeClient(embedded.address, retry=False, timeout=10) as client:
                client.embed_queries(["after the stub died"])
            break
        except Unavailable:
            codes.append("UNAVAILABLE")
        except Exception as exc:
            codes.append(type(exc).__name__)
        time.sleep(0.2)
    else:
        raise AssertionError(f"no recovery in {RECOVERY_S:.0f} s: {codes}")
    assert set(codes) <= {"UNAVAILABLE"}, codes
    # health follows at its next check (an Embed can succeed between two checks)
    wait_for(lambda: health(embedded.address) == HealthStatus.SERVING, 15, "SERVING")


def test_killed_triton_is_restarted_while_the_gateway_stays_up(embedded: GatewayProcess) -> None:
    first = tritonserver(embedded)
    first.kill()
    down_s = wait_for(lambda: health(embedded.address) == HealthStatus.NOT_SERVING, 5, "down")
    with CdeClient(embedded.address, retry=False, timeout=10) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.embed_queries(["while triton is down"])
        assert time.monotonic() - started < 3.0
    wait_for(lambda: embeds(embedded.address), RECOVERY_S, "embedding again")
    assert embedded.process is not None and embedded.process.poll() is None
    assert tritonserver(embedded).pid != first.pid
    assert "tritonserver exited" in embedded.output(), embedded.output()
    assert down_s < 5


def test_a_paused_stub_does_not_take_the_server_down(embedded: GatewayProcess) -> None:
    assert embeds(embedded.address)
    stub = stub_of(embedded, "cde_second_stage")
    stub.send_signal(signal.SIGSTOP)
    time.sleep(10)
    if stub.is_running():
        stub.send_signal(signal.SIGCONT)
    wait_for(lambda: embeds(embedded.address), RECOVERY_S, "embedding after the pause")
    assert embedded.process is not None and embedded.process.poll() is None


def test_health_turns_not_serving_on_the_first_failed_call(
    tmp_path: Path, gateway_process_factory: GatewayProcessFactory
) -> None:
    triton = TritonProcess(tiny_triton_settings(tmp_path / "cache"))
    triton.start()
    try:
        gateway = gateway_process_factory(triton_url=triton.grpc_url, health_interval_s=60)
        assert health(gateway.address) == HealthStatus.SERVING
        triton.stop()
        with (
            CdeClient(gateway.address, retry=False, timeout=10) as client,
            pytest.raises(Unavailable),
        ):
            client.embed_queries(["triton is gone"])
        # the next health check is a minute away: only the pool's news can explain this
        wait_for(lambda: health(gateway.address) == HealthStatus.NOT_SERVING, 2, "NOT_SERVING")
    finally:
        triton.stop()


def test_store_and_keys_file_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "store"
    database = directory / "cde.db"

    async def write_once() -> None:
        store = await SqliteStore.connect(str(database))
        await store.put_prompt("p", "x: ")  # something in the WAL
        await store.close()

    asyncio.run(write_once())
    assert directory.stat().st_mode & 0o777 == 0o700
    for path in directory.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path}: {oct(path.stat().st_mode)}"

    keys = tmp_path / "keys.toml"
    made = subprocess.run(
        [Path(sys.executable).parent / "cde", "keys", "new", "--tenant", "t", "--append", keys],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert keys.stat().st_mode & 0o777 == 0o600
