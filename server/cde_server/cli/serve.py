"""`cde serve`: the embedded Triton (unless CDE_TRITON_URL) and the gRPC gateway in front of it."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cde_server.gateway.app import Gateway
    from cde_server.gateway.settings import GatewaySettings
    from cde_server.triton.launcher import TritonProcess


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `serve` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the cde.v1 gRPC API (starts Triton unless CDE_TRITON_URL is set)",
        description=(
            "Start the embedded Triton server (unless CDE_TRITON_URL names one), then the gRPC "
            "gateway; wait until both are ready, print the address, and stop both cleanly on "
            "Ctrl-C/SIGTERM. Unset options come from CDE_* environment variables."
        ),
    )
    parser.add_argument("--model", help='checkpoint directory or "demo" (CDE_MODEL, demo)')
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="(CDE_DTYPE)")
    parser.add_argument("--host", help="listen address (CDE_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port (CDE_PORT, 50051)")
    parser.add_argument(
        "--http-port", help="HTTP API port, or off (CDE_HTTP_PORT, 8080; 0: a free one)"
    )
    parser.add_argument("--store", help="sqlite:///path or redis://host:port/db (CDE_STORE)")
    parser.add_argument(
        "--triton-url",
        help="external Triton host:port, comma-separated for several (CDE_TRITON_URL)",
    )
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (CDE_METRICS_PORT)")
    parser.set_defaults(func=run)


class _StopRequested(BaseException):
    """Raised by the SIGINT/SIGTERM handler while Triton starts."""


def run(args: argparse.Namespace) -> int:
    """Start everything, serve until a signal; 0 on a clean stop."""
    import signal

    from pydantic import ValidationError

    from cde_server.gateway.auth import Authenticator, KeysFileError
    from cde_server.gateway.request_log import configure_logging
    from cde_server.gateway.settings import GatewaySettings
    from cde_server.triton.environment import TritonSetupError
    from cde_server.triton.launcher import TritonProcess, TritonStartError
    from cde_server.triton.settings import TritonSettings

    overrides = {
        "model": args.model,
        "dtype": args.dtype,
        "host": args.host,
        "port": args.port,
        "http_port": args.http_port,
        "store": args.store,
        "triton_url": args.triton_url,
        "metrics_port": args.metrics_port,
    }
    try:
        settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
        triton_settings = TritonSettings(model=settings.model, dtype=settings.dtype)
    except ValidationError as exc:
        print(f"cde serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        # bad keys stop `cde serve` before Triton starts
        Authenticator.from_file(settings.api_keys_file, settings.api_keys)
    except KeysFileError as exc:
        print(f"cde serve: {exc}", file=sys.stderr)
        return 2

    def request_stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _StopRequested

    triton: TritonProcess | None = None
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if settings.triton_url is None:
            print(f"cde serve: starting Triton (model {settings.model})", file=sys.stderr)
            triton = TritonProcess(triton_settings, log=_triton_log)
            triton.start()
            settings = settings.model_copy(update={"triton_url": triton.grpc_url})
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # the event loop installs its own handlers
        return _run_gateway(settings, triton)
    except _StopRequested:
        return 0
    except KeyboardInterrupt:
        return 130
    except TritonSetupError as exc:
        print(f"cde serve: {exc}", file=sys.stderr)
        return 2
    except (TritonStartError, OSError) as exc:
        print(f"cde serve: {exc}", file=sys.stderr)
        return 1
    finally:
        if triton is not None:
            print("cde serve: stopping Triton", file=sys.stderr)
            triton.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_gateway(settings: GatewaySettings, triton: TritonProcess | None) -> int:
    """Run the gateway until a signal (0) or until the embedded Triton dies (1)."""
    import asyncio

    from cde_server.gateway.app import Gateway, serve_until_signalled

    async def main() -> int:
        gateway = Gateway(settings)
        server = asyncio.create_task(serve_until_signalled(gateway))
        while gateway.port == 0 and not server.done():
            await asyncio.sleep(0.05)
        if server.done():
            await server  # start-up failed: raise its error
            return 1
        await _announce(gateway)
        while not server.done():
            if triton is not None and not triton.is_running():
                print("cde serve: Triton exited unexpectedly; stopping", file=sys.stderr)
                server.cancel()
                await asyncio.gather(server, return_exceptions=True)
                await gateway.stop(0)
                return 1
            await asyncio.wait({server}, timeout=1.0)
        await server
        return 0

    return asyncio.run(main())


async def _announce(gateway: Gateway) -> None:
    """Wait until the gateway reports SERVING (up to a minute), then print how to use it."""
    import asyncio

    for _ in range(600):
        if gateway.serving:
            break
        await asyncio.sleep(0.1)
    else:
        print("cde serve: not SERVING yet (Triton or the store is unreachable)", file=sys.stderr)
    address = gateway.address
    print(f"cde serve: gateway ready on {address}", flush=True)
    http_url = gateway.http_url
    print(f"  http: {http_url or 'off (CDE_HTTP_PORT=off)'}", flush=True)
    for line in gateway.security_summary():
        print(f"  {line}", flush=True)
    if gateway.settings.tls_cert is None and not gateway.authenticator.enabled:
        print(f'  try:  cde embed --address {address} "hello world"', flush=True)
        print(
            "        .venv/bin/buf curl --protocol grpc --http2-prior-knowledge "
            f"http://{address}/cde.v1.EmbeddingService/GetModelInfo",
            flush=True,
        )
    if http_url is not None:
        key = " -H 'Authorization: Bearer $CDE_API_KEY'" if gateway.authenticator.enabled else ""
        model = gateway.model.cached_info.name if gateway.model.cached_info else "<model>"
        tls = " --cacert <CA file>" if gateway.settings.tls_cert is not None else ""
        print(
            f"        curl{tls}{key} -H 'Content-Type: application/json' "
            f'{http_url}/v1/embeddings -d \'{{"model": "{model}:query", '
            '"input": "hello world"}\'',
            flush=True,
        )
        print(f"        OpenAPI: {http_url}/openapi.json, docs: {http_url}/docs", flush=True)
    print("  stop: Ctrl-C", flush=True)


# Errors tritonserver logs on every start without a GPU; harmless on CPU, so logged as INFO.
_CPU_ONLY_NOISE = (
    "CudaDriverHelper has not been initialized",
    "CUDA driver version is insufficient",
)


def _triton_log(line: str) -> None:
    """Forward a Triton log line at a level read from its first letter (E, W, I)."""
    import logging

    level = {"E": logging.ERROR, "W": logging.WARNING}.get(line[:1], logging.DEBUG)
    if level == logging.ERROR and any(noise in line for noise in _CPU_ONLY_NOISE):
        level = logging.INFO
    logging.getLogger("cde_server.triton").log(level, "%s", line)
