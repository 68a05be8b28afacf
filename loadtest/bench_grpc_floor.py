"""The CPU floor of a Python gRPC relay: what any Python gateway pays per request.

Three processes on this machine: a client (this one, grpc.aio, c concurrent callers), a relay
(a grpc.aio server whose handler makes one unary call downstream and returns the answer) and a
backend (a grpc.aio server that echoes). Payloads are raw bytes (no protobuf, no work), so the
relay's CPU per request is gRPC's own cost of one incoming and one outgoing call; compare it with
the gateway's row of `bench_breakdown.py`. Prints one line per concurrency.

    .venv/bin/python loadtest/bench_grpc_floor.py [--requests 3200]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence

import grpc
import psutil

SERVICE, METHOD = "floor.Relay", "Call"
PAYLOAD = b"x" * 300  # about one short query's Embed request


def _handlers(behaviour: grpc.aio.UnaryUnaryMultiCallable | None) -> grpc.GenericRpcHandler:
    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request if behaviour is None else await behaviour(request)

    return grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(call)}
    )


async def serve(port: int, downstream: int | None) -> None:
    """The backend (downstream None: echo) or the relay (forward to `downstream`)."""
    behaviour = None
    if downstream is not None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{downstream}")
        behaviour = channel.unary_unary(f"/{SERVICE}/{METHOD}")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(behaviour),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def load(port: int, concurrency: int, requests: int) -> float:
    """Wall seconds for `requests` calls by `concurrency` closed-loop callers."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(f"/{SERVICE}/{METHOD}")
    for _ in range(50):
        await call(PAYLOAD)

    async def caller(count: int) -> None:
        for _ in range(count):
            await call(PAYLOAD)

    started = time.perf_counter()
    await asyncio.gather(*(caller(requests // concurrency) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    await channel.close()
    return seconds


def cpu(process: psutil.Process) -> float:
    """User + system CPU seconds of `process` so far."""
    times = process.cpu_times()
    return float(times.user + times.system)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3200)
    parser.add_argument("--port", type=int, default=61000, help="relay; the backend gets +1")
    parser.add_argument("--serve", nargs="+", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:  # a child: PORT [DOWNSTREAM]
        asyncio.run(serve(args.serve[0], args.serve[1] if len(args.serve) > 1 else None))
        return 0
    me = [sys.executable, __file__, "--serve"]
    relay_port, backend_port = args.port, args.port + 1
    children = [
        subprocess.Popen([*me, str(backend_port)]),
        subprocess.Popen([*me, str(relay_port), str(backend_port)]),
    ]
    try:
        time.sleep(2)
        backend, relay = (psutil.Process(child.pid) for child in children)
        for concurrency in (1, 32):
            count = args.requests - args.requests % concurrency
            before = cpu(relay), cpu(backend), time.process_time()
            seconds = asyncio.run(load(relay_port, concurrency, count))
            after = cpu(relay), cpu(backend), time.process_time()
            relay_ms, backend_ms, client_ms = (
                1000 * (a - b) / count for a, b in zip(after, before, strict=True)
            )
            print(
                f"c={concurrency}: {count / seconds:.0f} requests/s; CPU ms per request: "
                f"relay {relay_ms:.3f}, backend {backend_ms:.3f}, client {client_ms:.3f}"
            )
    finally:
        for child in children:
            child.terminate()
            child.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
