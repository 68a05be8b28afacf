"""The Triton launcher: clear set-up errors, and `cde triton` stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
from cde_server.cli.main import main as cde_main
from cde_server.triton.environment import (
    STUB_SPIN_COUNT,
    TritonSetupError,
    pytriton_install,
    server_environment,
)
from cde_server.triton.launcher import (
    SHM_DIR,
    TritonProcess,
    TritonStartError,
    process_group_members,
)
from support.triton_fixtures import TINY_CHECKPOINT, free_ports, tiny_triton_settings


def start_error(settings_dir: Path, **overrides: object) -> str:
    with pytest.raises(TritonSetupError) as caught:
        TritonProcess(tiny_triton_settings(settings_dir, **overrides)).start()
    return str(caught.value)


def test_missing_model_path(tmp_path: Path) -> None:
    assert "model path not found" in start_error(tmp_path, model=str(tmp_path / "nope"))
    assert "no config.json" in start_error(tmp_path, model=str(tmp_path))


def test_missing_binary(tmp_path: Path) -> None:
    message = start_error(tmp_path, triton_binary=tmp_path / "tritonserver")
    assert "tritonserver binary not found" in message


def test_missing_libpython(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = sysconfig.get_config_var
    fake = {"LIBDIR": str(tmp_path)}
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: fake.get(name, real(name)))
    assert "shared libpython not found" in start_error(tmp_path)


def test_short_openmp_spin_unless_the_user_sets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    install = pytriton_install()
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert server_environment(install, {})["GOMP_SPINCOUNT"] == STUB_SPIN_COUNT
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    assert server_environment(install, {})["GOMP_SPINCOUNT"] == "300000"


def test_incomplete_repository(tmp_path: Path) -> None:
    message = start_error(tmp_path, triton_model_repository=tmp_path)
    assert "lacks cde_tokenize" in message


def test_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"port {port}" in start_error(tmp_path, triton_grpc_port=port)


def test_cli_reports_setup_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cde_main(["triton", "--model", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "model path not found" in capsys.readouterr().err


def test_model_that_fails_to_load_gives_the_log(tmp_path: Path) -> None:
    settings = tiny_triton_settings(tmp_path, dtype="float16")  # float16 needs a GPU
    with pytest.raises(TritonStartError, match="float16") as caught:
        TritonProcess(settings).start()
    assert "exited" in str(caught.value)


def test_cli_stops_on_sigterm_without_leftovers(tmp_path: Path) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    env = dict(os.environ, CDE_TRITON_CACHE_DIR=str(tmp_path), CDE_TRITON_EXIT_TIMEOUT_S="5")
    env.pop("GOMP_SPINCOUNT", None)
    command = [
        sys.executable, "-m", "cde_server.cli.main", "triton",
        "--model", str(TINY_CHECKPOINT), "--device", "cpu",
        "--grpc-port", str(grpc_port), "--http-port", str(http_port),
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr

    def forward() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if "cde triton: ready" in line:
                break
        else:
            pytest.fail("cde triton did not become ready")
        children = [
            int(p)
            for p in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        ]
        (server,) = children
        stubs = process_group_members(server)
        assert len(stubs) >= 4  # tritonserver and one stub per python model
        for pid in stubs:  # the launcher's short OpenMP spin reaches every stub
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"GOMP_SPINCOUNT={STUB_SPIN_COUNT}".encode() in environ
        assert list(SHM_DIR.glob(f"cde_triton_{process.pid}_*"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert process_group_members(server) == []
    assert not list(SHM_DIR.glob(f"cde_triton_{process.pid}_*"))
