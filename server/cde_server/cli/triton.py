"""`cde triton`: run the bundled tritonserver on model_repository/ until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from cde_server.cli.lifecycle import (
    EXIT_FAILED,
    EXIT_MISCONFIGURED,
    EXIT_STOPPED,
    StopRequested,
    add_model_options,
    failure_status,
    report,
    settings_from_options,
    stop_on_signals,
)


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
    add_model_options(parser, model_default="")
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


def run(args: argparse.Namespace) -> int:
    """Start Triton, block until a signal or its exit; 0 on a clean stop."""
    from cde_server.triton.environment import TritonSetupError
    from cde_server.triton.launcher import TritonProcess, TritonStartError
    from cde_server.triton.settings import TritonSettings

    overrides = {
        "model": args.model,
        "dtype": args.dtype,
        "tokenizer": args.tokenizer,
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
    settings = settings_from_options("triton", TritonSettings, overrides)
    if settings is None:
        return EXIT_MISCONFIGURED

    def announce(signum: signal.Signals) -> None:
        report("triton", f"{signum.name} received, stopping")

    triton = TritonProcess(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        with stop_on_signals(announce):
            report("triton", f"starting (model {settings.model}, {triton.device})")
            triton.start()
            report(
                "triton",
                f"ready: grpc {triton.grpc_url}, http {triton.http_url}, "
                f"metrics {triton.metrics_url}",
            )
            status = triton.wait()
            report("triton", f"tritonserver exited unexpectedly ({status})")
            return EXIT_FAILED
    except StopRequested:
        return EXIT_STOPPED
    except (TritonSetupError, TritonStartError) as exc:
        return failure_status("triton", exc)
    finally:
        triton.stop()
