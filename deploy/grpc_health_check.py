#!/usr/bin/env python3
"""Container health check for the gateway: exit 0 when grpc.health.v1 reports SERVING.

Used by the gateway image's HEALTHCHECK and by docker-compose. It asks the plaintext health
listener (CDE_HEALTH_PORT) when one is configured, else the main port (CDE_PORT, plaintext).
Usage: cde-grpc-health-check [SERVICE]   (default: "", the server's overall status)
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def health_address() -> str:
    """host:port of the health service inside this container."""
    port = os.environ.get("CDE_HEALTH_PORT") or os.environ.get("CDE_PORT") or "50051"
    return f"127.0.0.1:{port}"


def check(service: str) -> int:
    """0 if `service` is SERVING, 1 otherwise (message on stderr)."""
    address = health_address()
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            print(f"health check of {address} failed: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{address} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(check(sys.argv[1] if len(sys.argv) > 1 else ""))
