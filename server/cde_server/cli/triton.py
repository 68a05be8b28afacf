"""`cde triton`: run the bundled tritonserver on model_repository/ until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `triton` sub-command."""
    parser = subparsers.add_parser(
        "triton",
        help="run Triton with the CDE model repository",
        description=(
            "Start the tritonserver bundled in nvidia-pytriton on the CDE model repository, wait "
            "until every model is ready, forward its log, and stop it cleanly on SIGINT/SIGTERM. "
            "Unset options come from CDE_* environment variables (CDE_MODEL, CDE_DTYPE, "
            "CDE_TRITON_GRPC_PORT, ...)."
        ),
    )
    parser.add_argument("--model", help='checkpoint directory or "demo" (CDE_MODEL)')
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="(CDE_DTYPE)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "gpu"], help="instance kind (CDE_TRITON_DEVICE)"
    )
    parser.add_argument("--grpc-port", type=int, help="(CDE_TRITON_GRPC_PORT, 8001)")
    parser.add_argument("--http-port", type=int, help="(CDE_TRITON_HTTP_PORT, 8000)")
    parser.add_argument("--metrics-port", type=int, help="(CDE_TRITON_METRICS_PORT, 8002)")
    parser.add_argument("--bind", help="listen address (CDE_TRITON_BIND_ADDRESS, 127.0.0.1)")
    parser.add_argument("--model-repository", help="(CDE_TRITON_MODEL_REPOSITORY)")
    parser.add_argument(
        "--context-cache-bytes",
        type=int,
        help="per second-stage instance (CDE_CONTEXT_CACHE_BYTES)",
    )
    parser.add_argument(
        "--token-budget", type=int, help="positions per forward pass, 0: default (CDE_TOKEN_BUDGET)"
    )
    parser.add_argument("--log-verbose", type=int, help="Triton's verbose level (0: off)")
    parser.set_defaults(func=run)


class _StopRequested(BaseException):
    """Raised by the SIGINT/SIGTERM handler to unwind start-up or waiting."""


def run(args: argparse.Namespace) -> int:
    """Start Triton, block until a signal or its exit; 0 on a clean stop."""
    import signal

    from pydantic import ValidationError

    from cde_server.triton.environment import TritonSetupError
    from cde_server.triton.launcher import TritonProcess, TritonStartError
    from cde_server.triton.settings import TritonSettings

    overrides = {
        "model": args.model,
        "dtype": args.dtype,
        "triton_device": args.device,
        "triton_grpc_port": args.grpc_port,
        "triton_http_port": args.http_port,
        "triton_metrics_port": args.metrics_port,
        "triton_bind_address": args.bind,
        "triton_model_repository": args.model_repository,
        "context_cache_bytes": args.context_cache_bytes,
        "token_budget": args.token_budget,
        "triton_log_verbose": args.log_verbose,
    }
    try:
        settings = TritonSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        print(f"cde triton: invalid settings:\n{exc}", file=sys.stderr)
        return 2

    def request_stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one stop; Triton has its own exit timeout
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"cde triton: {signal.Signals(signum).name} received, stopping", file=sys.stderr)
        raise _StopRequested

    triton = TritonProcess(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"cde triton: starting (model {settings.model}, {triton.device})", file=sys.stderr)
        triton.start()
        print(
            f"cde triton: ready: grpc {triton.grpc_url}, http {triton.http_url}, "
            f"metrics {triton.metrics_url}",
            file=sys.stderr,
        )
        status = triton.wait()
        print(f"cde triton: tritonserver exited unexpectedly ({status})", file=sys.stderr)
        return 1
    except _StopRequested:
        return 0
    except TritonSetupError as exc:
        print(f"cde triton: {exc}", file=sys.stderr)
        return 2
    except TritonStartError as exc:
        print(f"cde triton: {exc}", file=sys.stderr)
        return 1
    finally:
        triton.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
