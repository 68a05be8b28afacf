"""Run the bundled tritonserver on our model repository as a managed child process.

`TritonProcess` starts the server in its own process group (so its python backend stubs can be
found and stopped with it), forwards its log lines, waits until every model is ready, and stops
it with SIGTERM, escalating to SIGKILL for the whole group, then removes its shared memory.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from cde_server.triton import environment as triton_env
from cde_server.triton import protocol as triton_protocol
from cde_server.triton.environment import TritonSetupError
from cde_server.triton.protocol import RESTRICTED_PROTOCOLS, SECRET_HEADER, secret_headers
from cde_server.triton.settings import TritonSettings

logger = logging.getLogger("cde_server.triton")

TOKENIZER_ENV = "CDE_TOKENIZER"
"""Read by the stubs (cde_model.tokenizer_v2): where a v2 checkpoint's tokenizer.json lives."""
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "cde_triton_"
"""Our python-backend shared memory regions are named cde_triton_<launcher pid>_<n>_..."""

_instances = iter(range(1, 1 << 30))
_PR_SET_PDEATHSIG = 1


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries the end of its log."""


def resolve_model(model: str) -> str:
    """The model reference the stubs get: "demo", or the checkpoint's absolute path."""
    if model == "demo":
        return model
    path = Path(model).expanduser()
    if not path.is_dir():
        raise TritonSetupError(f'model path not found: {model} (a checkpoint directory or "demo")')
    if not (path / "config.json").is_file():
        raise TritonSetupError(f"not a CDE checkpoint (no config.json): {path}")
    return str(path.resolve())


def resolve_tokenizer(tokenizer: Path | None) -> str | None:
    """The tokenizer directory the stubs get (`CDE_TOKENIZER`), absolute; None when unset."""
    if tokenizer is None:
        return None
    path = tokenizer.expanduser()
    if not path.is_dir():
        raise TritonSetupError(f"tokenizer directory not found: {tokenizer} (CDE_TOKENIZER)")
    return str(path.resolve())


def check_tokenizer(model: str, tokenizer: str | None) -> None:
    """TritonSetupError, before anything starts, when a cde-small-v2 checkpoint has no
    tokenizer.json beside it nor in `tokenizer` (the message says which files to copy)."""
    if model == "demo":
        return
    from cde_model.family import V2, model_family, read_config
    from cde_model.tokenizer_v2 import v2_tokenizer_file

    directory = Path(model)
    try:
        family = model_family(read_config(directory / "config.json"))
    except ValueError as exc:
        raise TritonSetupError(str(exc)) from exc
    if family != V2:
        return
    try:
        # "" (not None): the stubs get no CDE_TOKENIZER but this one, so the check ignores it too
        v2_tokenizer_file(directory, tokenizer if tokenizer is not None else "")
    except FileNotFoundError as exc:
        raise TritonSetupError(str(exc)) from exc


def check_repository(repository: Path) -> Path:
    """The repository's absolute path; TritonSetupError if a model directory is missing."""
    missing = [
        m for m in triton_protocol.ALL_MODELS if not (repository / m / "config.pbtxt").is_file()
    ]
    if missing:
        raise TritonSetupError(f"model repository {repository} lacks {', '.join(missing)}")
    return repository.resolve()


def check_ports_free(address: str, ports: list[int]) -> None:
    """TritonSetupError if one of `ports` cannot be bound on `address`."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                raise TritonSetupError(f"port {port} on {address} is not free: {exc}") from exc


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago (tests, benchmarks)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


SHM_GUARD_INTERVAL_S = 0.2


def protect_shm(prefix: str) -> None:
    """Make the shared-memory regions whose names start with `prefix` readable by us only."""
    for path in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)


def remove_stale_shm() -> None:
    """Delete our shared-memory regions left by launchers that no longer run."""
    for path in SHM_DIR.glob(f"{SHM_PREFIX}*"):
        owner = path.name[len(SHM_PREFIX) :].split("_", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                path.unlink()


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the launching thread dies (no orphaned server)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonProcess:
    """A tritonserver child process serving the CDE model repository.

    Use as a context manager, or call start() and stop(). start() returns once the server and
    every model are ready, or raises TritonSetupError (missing binary, libpython, model path,
    busy port) or TritonStartError (server exited or timed out; message holds its log tail).
    """

    def __init__(
        self,
        settings: TritonSettings | None = None,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else TritonSettings()
        self._log = log if log is not None else logger.info
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=60)
        self._shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{next(_instances)}_"

    # --- addresses -------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """host:port for tritonclient.grpc."""
        return self.settings.grpc_url

    @property
    def http_url(self) -> str:
        """host:port for tritonclient.http."""
        return f"{self.settings.triton_host}:{self.settings.triton_http_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus endpoint."""
        return f"http://{self.settings.triton_host}:{self.settings.triton_metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """Process id of tritonserver (also its process group id), None before start()."""
        return self._process.pid if self._process is not None else None

    @property
    def device(self) -> str:
        """Which configs the server loads: "gpu" (config.pbtxt) or "cpu" (configs/cpu.pbtxt)."""
        chosen = self.settings.triton_device
        if chosen == "auto":
            return "gpu" if triton_env.has_gpu() else "cpu"
        return chosen

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        """The last lines the server printed."""
        return "\n".join(self._tail)

    # --- command ---------------------------------------------------------------------------
    def command(self, binary: Path, backend_dir: Path, repository: Path) -> list[str]:
        """tritonserver's command line."""
        s = self.settings
        args = [
            str(binary),
            f"--model-repository={repository}",
            f"--backend-directory={backend_dir}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            f"--exit-timeout-secs={s.triton_exit_timeout_s}",
            f"--log-verbose={s.triton_log_verbose}",
            # explicit: the gateway can reload a model whose stub died (unload, then load)
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--grpc-address={s.triton_bind_address}",
            f"--grpc-port={s.triton_grpc_port}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={s.triton_shm_default_bytes}",
            f"--backend-config=python,shm-growth-byte-size={s.triton_shm_growth_bytes}",
        ]
        args += self._endpoint_args()
        if self.device == "cpu":
            args += [
                "--model-config-name=cpu",
                "--pinned-memory-pool-byte-size=0",
                "--cuda-memory-pool-byte-size=0:0",
                "--allow-gpu-metrics=false",
            ]
        return args + list(s.triton_extra_args)

    def _endpoint_args(self) -> list[str]:
        """HTTP and metrics endpoints when allowed; the secret on every protocol group."""
        s = self.settings
        args = []
        if s.triton_allow_http:
            args += [f"--http-address={s.triton_bind_address}", f"--http-port={s.triton_http_port}"]
        else:
            args.append("--allow-http=false")
        if s.triton_allow_metrics:
            args += [
                f"--metrics-address={s.triton_bind_address}",
                f"--metrics-port={s.triton_metrics_port}",
            ]
        else:
            args.append("--allow-metrics=false")
        if s.triton_secret is not None:
            restriction = (
                f"{RESTRICTED_PROTOCOLS}:{SECRET_HEADER}={s.triton_secret.get_secret_value()}"
            )
            args.append(f"--grpc-restricted-protocol={restriction}")
            if s.triton_allow_http:
                args.append(f"--http-restricted-protocol={restriction}")
        return args

    @property
    def _ports(self) -> list[int]:
        s = self.settings
        ports = [s.triton_grpc_port]
        if s.triton_allow_http:
            ports.append(s.triton_http_port)
        if s.triton_allow_metrics:
            ports.append(s.triton_metrics_port)
        return ports

    def _headers(self) -> dict[str, str] | None:
        secret = self.settings.triton_secret
        return secret_headers(None if secret is None else secret.get_secret_value())

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start tritonserver and wait until it and all CDE models are ready."""
        if self._process is not None:
            raise RuntimeError("TritonProcess already started")
        self.launch()
        try:
            self.wait_ready(self.settings.triton_startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def relaunch(self) -> None:
        """After the server died: clean up what it left and launch it again (same ports and
        secret); call wait_ready() next. Call from the thread that started it (see launch)."""
        if self.is_running():
            raise RuntimeError("tritonserver is still running")
        self.stop()
        self._process = None
        self.launch()

    @property
    def returncode(self) -> int | None:
        """The exit status once the server has exited, else None."""
        return None if self._process is None else self._process.poll()

    def launch(self) -> None:
        """Start the tritonserver process without waiting for it (the main thread's launches
        die with this process)."""
        s = self.settings
        model = resolve_model(s.model)
        tokenizer = resolve_tokenizer(s.tokenizer)
        check_tokenizer(model, tokenizer)
        repository = check_repository(s.triton_model_repository)
        install = triton_env.pytriton_install(s.triton_binary)
        triton_env.check_install(install)
        env = triton_env.server_environment(
            install,
            {
                "CDE_MODEL": model,
                "CDE_DTYPE": s.dtype,
                "CDE_CONTEXT_CACHE_BYTES": str(s.context_cache_bytes),
                "CDE_TOKEN_BUDGET": str(s.token_budget),
            },
        )
        # The settings decide the stubs' tokenizer directory, not a stray CDE_TOKENIZER.
        env.pop(TOKENIZER_ENV, None)
        if tokenizer is not None:
            env[TOKENIZER_ENV] = tokenizer
        backend_dir = triton_env.prepare_backend_dir(install, s.triton_cache_dir)
        check_ports_free(s.triton_bind_address, self._ports)
        remove_stale_shm()
        cmd = self.command(install.binary, backend_dir, repository)
        logger.debug("starting %s", " ".join(cmd))
        self._process = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent
            if threading.current_thread() is threading.main_thread()
            else None,
        )
        self._reader = threading.Thread(target=self._forward_logs, name="triton-log", daemon=True)
        self._reader.start()
        guard = threading.Thread(target=self._guard_shm, name="triton-shm", daemon=True)
        guard.start()

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the server and every CDE model report ready; TritonStartError otherwise."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + timeout_s
        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            while True:
                if not self.is_running():
                    code = self._process.returncode if self._process is not None else None
                    raise TritonStartError(
                        f"tritonserver exited ({code}) during start-up:\n{self.log_tail()}"
                    )
                with contextlib.suppress(InferenceServerException):
                    headers = self._headers()
                    if client.is_server_ready(headers=headers) and all(
                        client.is_model_ready(m, headers=headers)
                        for m in triton_protocol.ALL_MODELS
                    ):
                        protect_shm(self._shm_prefix)
                        return
                if time.monotonic() > deadline:
                    raise TritonStartError(
                        f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}"
                    )
                time.sleep(0.25)

    def stop(self) -> int | None:
        """SIGTERM the server, wait for it and its stubs, SIGKILL stragglers; returns its status."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.settings.triton_exit_timeout_s + 30)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver did not exit after SIGTERM; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Stubs notice their parent is gone within about 300 ms and exit on their own.
        deadline = time.monotonic() + 5.0
        while process_group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_group_members(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        for path in SHM_DIR.glob(f"{self._shm_prefix}*"):
            with contextlib.suppress(OSError):
                path.unlink()
        return process.returncode

    def wait(self) -> int:
        """Block until the server exits by itself; its exit status."""
        if self._process is None:
            raise RuntimeError("TritonProcess not started")
        return self._process.wait()

    def _guard_shm(self) -> None:
        """Keep this server's shared-memory regions 0600 while it runs: they carry request text
        and the python backend creates them 0644 whatever the umask (regions appear when
        models load, also on a reload)."""
        process = self._process
        while process is not None and process.poll() is None:
            protect_shm(self._shm_prefix)
            time.sleep(SHM_GUARD_INTERVAL_S)

    def _forward_logs(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if not line:
                continue
            self._tail.append(line)
            self._log(line)

    def __enter__(self) -> TritonProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_triton(settings: TritonSettings | None = None) -> Iterator[TritonProcess]:
    """Context manager form: a started TritonProcess, stopped on exit."""
    with TritonProcess(settings) as process:
        yield process
