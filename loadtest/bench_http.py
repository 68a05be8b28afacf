"""`make bench-http`: the HTTP API's /v1/embeddings vs gRPC Embed on the demo model.

Starts `cde serve` (embedded Triton, the demo model unless CDE_MODEL is set) on free loopback
ports with a temporary SQLite store, creates a context set, then, for each concurrency c in
1/8/32, runs c closed-loop clients for a fixed time per transport, one transport after the
other, every request carrying `--batch` short queries on that context set with the query
prompt: gRPC `Embed` (grpc.aio, raw float32 matrix), `/v1/embeddings` with
`encoding_format=float` and with `base64` (httpx, one connection per client). Reports texts/s
and request latency p50/p99, and HTTP's throughput relative to gRPC's. The clients run in this
process, on the same machine as the server, so client CPU counts against both alike.
Results replace the "## HTTP API (make bench-http)" section of loadtest/RESULTS.md.

    .venv/bin/python loadtest/bench_http.py [--seconds 8] [--batch 8] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

LOADTEST = Path(__file__).resolve().parent
RESULTS = LOADTEST / "RESULTS.md"
SECTION = "## HTTP API (make bench-http)"
CONCURRENCY = (1, 8, 32)
TRANSPORTS = ("grpc", "http float", "http base64")
WORDS = (
    "search", "index", "query", "vector", "model", "context", "document", "embedding",
    "server", "batch", "cache", "token", "latency", "throughput", "gradient", "corpus",
)  # fmt: skip
CONTEXT = "bench-http"


@dataclass(frozen=True)
class Measurement:
    """One transport at one concurrency."""

    transport: str
    concurrency: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float


def queries(count: int, seed: int) -> list[str]:
    """Short queries of 6-14 words, deterministic."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 15)))) for _ in range(count)]


Send = Callable[[list[str]], Awaitable[int]]


async def closed_loop(seconds: float, concurrency: int, batch: int, send: Send) -> Measurement:
    """`concurrency` clients sending requests back to back for `seconds` (after a warm-up)."""
    latencies: list[float] = []
    texts = 0
    for _ in range(concurrency):  # warm up connections
        await send(queries(batch, 0))
    end = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal texts
        request = 0
        while time.perf_counter() < end:
            batch_texts = queries(batch, index * 100_000 + request)
            request += 1
            sent = time.perf_counter()
            rows = await send(batch_texts)
            if rows != batch:
                raise AssertionError(f"{rows} rows for {batch} texts")
            latencies.append(time.perf_counter() - sent)
            texts += rows

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return Measurement(
        "", concurrency, texts / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    )


async def measure(
    grpc_address: str, http_url: str, seconds: float, batch: int
) -> list[Measurement]:
    """Every transport at every concurrency."""
    import grpc
    import httpx
    from cde.v1 import embedding_service_pb2 as pb
    from cde.v1 import embedding_service_pb2_grpc as pb_grpc

    results = []
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)

        async def send_grpc(texts: list[str]) -> int:
            response = await stub.Embed(
                pb.EmbedRequest(texts=texts, prompt="query", context_set=CONTEXT)
            )
            matrix = np.frombuffer(response.embeddings.data, dtype="<f4")
            return int(matrix.reshape(response.embeddings.rows, response.embeddings.dim).shape[0])

        for concurrency in CONCURRENCY:
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            async with httpx.AsyncClient(base_url=http_url, limits=limits, timeout=600) as http:

                def http_sender(encoding: str) -> Send:
                    async def send(texts: list[str]) -> int:
                        body = {"model": f"{CONTEXT}:query", "input": texts}
                        body["encoding_format"] = encoding
                        answer = (await http.post("/v1/embeddings", json=body)).json()
                        if encoding == "base64":
                            rows = [
                                np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
                                for item in answer["data"]
                            ]
                        else:
                            rows = [np.asarray(item["embedding"]) for item in answer["data"]]
                        return len(rows)

                    return send

                senders = {
                    "grpc": send_grpc,
                    "http float": http_sender("float"),
                    "http base64": http_sender("base64"),
                }
                for transport in TRANSPORTS:
                    result = await closed_loop(seconds, concurrency, batch, senders[transport])
                    results.append(Measurement(transport, concurrency, *_values(result)))
                    print(
                        f"{transport:12s} c={concurrency:3d} {result.texts_per_s:8.1f} texts/s "
                        f"p50 {result.p50_ms:7.1f} ms p99 {result.p99_ms:7.1f} ms",
                        flush=True,
                    )
    return results


def _values(result: Measurement) -> tuple[float, float, float]:
    return result.texts_per_s, result.p50_ms, result.p99_ms


def start_stack(store: Path) -> tuple[subprocess.Popen[str], str, str]:
    """`cde serve` with the embedded Triton; (process, gRPC address, HTTP base URL)."""
    from cde_server.triton.launcher import free_ports

    grpc_port, http_port, g1, g2, g3 = free_ports(5)
    env = dict(os.environ)
    env.setdefault("CDE_MODEL", "demo")
    env.update(
        CDE_PORT=str(grpc_port),
        CDE_HTTP_PORT=str(http_port),
        CDE_METRICS_PORT="off",
        CDE_STORE=f"sqlite://{store}",
        CDE_LOG_LEVEL="WARNING",
        CDE_TRITON_GRPC_PORT=str(g1),
        CDE_TRITON_HTTP_PORT=str(g2),
        CDE_TRITON_METRICS_PORT=str(g3),
        HF_HUB_OFFLINE="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cde_server.cli.main", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "gateway ready" in line:
            return process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
    raise RuntimeError(f"cde serve exited with status {process.wait()}")


def section(results: list[Measurement], batch: int, seconds: float, model: str) -> str:
    """The RESULTS.md section."""
    by = {(m.transport, m.concurrency): m for m in results}
    lines = [
        SECTION,
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, model {model}, {os.cpu_count()} CPUs (shared), "
        f"{batch} queries per request, {seconds:.0f} s per cell, clients in the benchmark "
        "process on the same machine. `/v1/embeddings` (httpx) vs gRPC `Embed` (grpc.aio); "
        "ratio = HTTP texts/s over gRPC texts/s at the same concurrency.",
        "",
        "| c | transport | texts/s | p50 ms | p99 ms | ratio vs gRPC |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in CONCURRENCY:
        grpc_rate = by[("grpc", concurrency)].texts_per_s
        for transport in TRANSPORTS:
            m = by[(transport, concurrency)]
            lines.append(
                f"| {concurrency} | {transport} | {m.texts_per_s:.1f} | {m.p50_ms:.1f} | "
                f"{m.p99_ms:.1f} | {m.texts_per_s / grpc_rate:.2f} |"
            )
    saturated = max(CONCURRENCY)
    ratios = [
        by[(t, saturated)].texts_per_s / by[("grpc", saturated)].texts_per_s for t in TRANSPORTS[1:]
    ]
    verdict = "meets" if min(ratios) >= 0.9 else "misses"
    lines += [
        "",
        f"At c = {saturated} HTTP reaches {min(ratios):.2f}-{max(ratios):.2f}x gRPC's throughput "
        f"({verdict} the 0.9x target).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each cell")
    parser.add_argument("--batch", type=int, default=8, help="queries per request")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(LOADTEST))
    import httpx
    from results import replace_section

    with tempfile.TemporaryDirectory() as folder:
        process, grpc_address, http_url = start_stack(Path(folder) / "store.db")
        try:
            documents = [" ".join(queries(1, 10_000 + i)) for i in range(64)]
            created = httpx.post(
                f"{http_url}/v1/context-sets",
                json={"name": CONTEXT, "documents": documents, "replace": True},
                timeout=600,
            )
            created.raise_for_status()
            model = httpx.get(f"{http_url}/v1/model-info", timeout=60).json()["model_name"]
            results = asyncio.run(measure(grpc_address, http_url, args.seconds, args.batch))
        finally:
            process.terminate()
            process.wait(60)
    text = section(results, args.batch, args.seconds, model)
    print(text)
    if not args.no_write:
        replace_section(RESULTS, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
