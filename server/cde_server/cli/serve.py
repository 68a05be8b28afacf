"""`cde serve`: the embedded Triton (unless CDE_TRITON_URL) and the gRPC gateway in front of it."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from cde_server.cli.lifecycle import (
    EXIT_MISCONFIGURED,
    EXIT_STOPPED,
    StopRequested,
    add_model_options,
    failure_status,
    report,
    settings_from_options,
    stop_on_signals,
)

if TYPE_CHECKING:
    from cde_server.gateway.app import Gateway
    from cde_server.gateway.settings import GatewaySettings
    from cde_server.triton.launcher import TritonProcess
    from cde_server.triton.settings import TritonSettings


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
    add_model_options(parser, model_default=", demo")
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


def run(args: argparse.Namespace) -> int:
    """Start everything, serve until a signal; 0 on a clean stop."""
    import signal

    from pydantic import ValidationError

    from cde_server.gateway.auth import Authenticator, KeysFileError
    from cde_server.gateway.request_log import configure_logging
    from cde_server.gateway.settings import GatewaySettings
    from cde_server.triton.environment import TritonSetupError
    from cde_server.triton.launcher import TritonProcess, TritonStartError

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
    settings = settings_from_options("serve", GatewaySettings, overrides)
    if settings is None:
        return EXIT_MISCONFIGURED
    try:
        triton_settings = _embedded_triton_settings(settings, args.tokenizer)
    except ValidationError as exc:
        report("serve", f"invalid settings:\n{exc}")
        return EXIT_MISCONFIGURED
    configure_logging(settings.log_level)
    try:
        # bad keys stop `cde serve` before Triton starts
        Authenticator.from_file(settings.api_keys_file, settings.api_keys)
    except KeysFileError as exc:
        report("serve", exc)
        return EXIT_MISCONFIGURED

    triton: TritonProcess | None = None
    try:
        with stop_on_signals():
            if settings.triton_url is None:
                report("serve", f"starting Triton (model {settings.model})")
                triton = TritonProcess(triton_settings, log=_triton_log)
                triton.start()
                settings = settings.model_copy(
                    update={
                        "triton_url": triton.grpc_url,
                        "triton_secret": triton_settings.triton_secret,
                    }
                )
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)  # the event loop installs its own handlers
            return _run_gateway(settings, triton)
    except StopRequested:
        return EXIT_STOPPED
    except KeyboardInterrupt:
        return 130
    except (TritonSetupError, TritonStartError, OSError) as exc:
        return failure_status("serve", exc)
    finally:
        if triton is not None:
            report("serve", "stopping Triton")
            triton.stop()


def _embedded_triton_settings(settings: GatewaySettings, tokenizer: str | None) -> TritonSettings:
    """The embedded Triton: the gateway's model and dtype (and `tokenizer` when given), a secret
    on every protocol (made now unless CDE_TRITON_SECRET is set), HTTP and metrics endpoints off
    unless enabled."""
    import os
    import secrets

    from pydantic import SecretStr

    from cde_server.triton.settings import TritonSettings

    overrides: dict[str, Any] = {
        name: False
        for name in ("triton_allow_http", "triton_allow_metrics")
        if f"CDE_{name.upper()}" not in os.environ
    }
    if tokenizer is not None:
        overrides["tokenizer"] = tokenizer
    secret = settings.triton_secret or SecretStr(secrets.token_urlsafe(32))
    return TritonSettings(
        model=settings.model, dtype=settings.dtype, triton_secret=secret, **overrides
    )


def _run_gateway(settings: GatewaySettings, triton: TritonProcess | None) -> int:
    """Run the gateway until a signal (0), or until the embedded Triton keeps dying (1)."""
    import asyncio

    from cde_server.cli.lifecycle import EXIT_FAILED
    from cde_server.gateway.app import Gateway, serve_until_signalled
    from cde_server.triton.supervisor import TritonSupervisor

    async def main() -> int:
        gateway = Gateway(settings)
        server = asyncio.create_task(serve_until_signalled(gateway))
        started = asyncio.create_task(gateway.started.wait())
        await asyncio.wait({server, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if server.done():
            await server  # start-up failed: raise its error
            return EXIT_FAILED
        await _announce(gateway)
        if triton is None:
            await server
            return EXIT_STOPPED

        async def rejoin() -> None:  # probe now rather than at the next health interval
            await gateway.inference.ready()

        supervision = asyncio.create_task(TritonSupervisor(triton, on_restarted=rejoin).run())
        await asyncio.wait({server, supervision}, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            supervision.cancel()
            await asyncio.gather(supervision, return_exceptions=True)
            await server
            return EXIT_STOPPED
        report("serve", f"{supervision.result()}; stopping")
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        await gateway.stop(0)
        return EXIT_FAILED

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
    info = gateway.model.cached_info
    if info is not None:
        print(
            f"  model: {info.name} (family {info.family or 'unknown'}, N={info.corpus_size}, "
            f"{info.dtype} on {info.device}, fingerprint {info.fingerprint[:12]})",
            flush=True,
        )
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
    """Forward a Triton log line at a level read from its first letter (E, W, I); the lines of
    a crash (abort, signal, uncaught exception), which have no such prefix, at ERROR."""
    import logging

    level = {"E": logging.ERROR, "W": logging.WARNING}.get(line[:1], logging.DEBUG)
    if level == logging.ERROR and any(noise in line for noise in _CPU_ONLY_NOISE):
        level = logging.INFO
    elif level == logging.DEBUG and any(sign in line for sign in _FATAL_SIGNS):
        level = logging.ERROR
    logging.getLogger("cde_server.triton").log(level, "%s", line)


# What tritonserver prints, without a log prefix, when it dies (seen: a paused stub makes it
# abort with boost::interprocess::lock_exception, then "Signal (6) received.").
_FATAL_SIGNS = (
    "terminate called",
    "what():",
    "Signal (6)",
    "Signal (11)",
    "Segmentation fault",
    "Aborted",
)
