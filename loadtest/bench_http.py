"""`make bench-http`: the HTTP API's /v1/embeddings vs gRPC Embed on the demo model.

Starts `cde serve` (embedded Triton, the demo model unless CDE_MODEL is set) on free loopback
ports with a temporary SQLite store, creates a context set, then, for each concurrency c in
1/8/32, runs c closed-loop clients per transport, every request carrying `--batch` short
queries on that context set with the query prompt: gRPC `Embed` (grpc.aio on one channel, raw
float32 matrix), `/v1/embeddings` with `encoding_format=float` and with `base64` (aiohttp, a
pool of c keep-alive connections, orjson on both ends of the body). Both clients are C-backed
and decode the vectors into float32 arrays, so neither measures itself: the clients run in this
process, on the same machine as the server, and their CPU counts against both alike.
The transports take turns in `--rounds` short slices (rotating the order), so load from other
work on a shared machine falls on all of them alike. Reports texts/s, request latency
p50/p99, HTTP's throughput relative to gRPC's, and the CPU seconds per text of every process
involved (clients, gateway, Triton and its stubs), which load from other work disturbs less.
Results replace the "## HTTP API (make bench-http)" section of loadtest/RESULTS.md.

    .venv/bin/python loadtest/bench_http.py [--seconds 8] [--rounds 4] [--batch 8] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
    cpu_ms_per_text: float  # every process: clients, gateway, Triton and its stubs


def queries(count: int, seed: int) -> list[str]:
    """Short queries of 6-14 words, deterministic."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 15)))) for _ in range(count)]


Send = Callable[[list[str]], Awaitable[int]]


@dataclass
class Tally:
    """What one transport's slices at one concurrency added up to."""

    texts: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0

    def measurement(self, transport: str, concurrency: int) -> Measurement:
        ms = np.array(self.latencies) * 1000
        return Measurement(
            transport,
            concurrency,
            self.texts / self.seconds,
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 99)),
            1000 * self.cpu_seconds / self.texts,
        )


def cpu_seconds_of(pids: list[int]) -> Callable[[], float]:
    """CPU seconds (user + system) used so far by the processes `pids` and their descendants
    (as they are now: the stack's processes live for the whole run)."""
    import psutil

    roots = [psutil.Process(pid) for pid in pids]
    processes = roots + [child for root in roots for child in root.children(recursive=True)]

    def total() -> float:
        seconds = 0.0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                seconds += times.user + times.system
        return seconds

    return total


async def closed_loop(
    seconds: float,
    concurrency: int,
    batch: int,
    send: Send,
    tally: Tally,
    cpu: Callable[[], float] = lambda: 0.0,
) -> None:
    """`concurrency` clients sending requests back to back for `seconds`, added to `tally`."""
    end = time.perf_counter() + seconds

    async def client(index: int) -> None:
        request = 0
        while time.perf_counter() < end:
            batch_texts = queries(batch, index * 100_000 + request + len(tally.latencies))
            request += 1
            sent = time.perf_counter()
            rows = await send(batch_texts)
            if rows != batch:
                raise AssertionError(f"{rows} rows for {batch} texts")
            tally.latencies.append(time.perf_counter() - sent)
            tally.texts += rows

    started, cpu_before = time.perf_counter(), cpu()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    tally.seconds += time.perf_counter() - started
    tally.cpu_seconds += cpu() - cpu_before


async def measure(
    grpc_address: str,
    http_url: str,
    seconds: float,
    rounds: int,
    batch: int,
    cpu: Callable[[], float],
) -> list[Measurement]:
    """Every transport at every concurrency, in `rounds` alternating slices each; `cpu`:
    the CPU seconds every process involved has used so far."""
    import aiohttp
    import grpc
    import orjson
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
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(http_url, connector=connector) as http:

                def http_sender(encoding: str) -> Send:
                    headers = {"content-type": "application/json"}

                    async def send(texts: list[str]) -> int:
                        body = {"model": f"{CONTEXT}:query", "input": texts}
                        body["encoding_format"] = encoding
                        async with http.post(
                            "/v1/embeddings", data=orjson.dumps(body), headers=headers
                        ) as response:
                            response.raise_for_status()
                            answer = orjson.loads(await response.read())
                        if encoding == "base64":
                            rows = [
                                np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
                                for item in answer["data"]
                            ]
                        else:
                            rows = [
                                np.asarray(item["embedding"], dtype=np.float32)
                                for item in answer["data"]
                            ]
                        return len(rows)

                    return send

                senders = {
                    "grpc": send_grpc,
                    "http float": http_sender("float"),
                    "http base64": http_sender("base64"),
                }
                for transport in TRANSPORTS:  # warm up connections and the model's batches
                    await closed_loop(1.0, concurrency, batch, senders[transport], Tally())
                tallies = {transport: Tally() for transport in TRANSPORTS}
                for round_index in range(rounds):
                    shift = round_index % len(TRANSPORTS)
                    for transport in TRANSPORTS[shift:] + TRANSPORTS[:shift]:
                        await closed_loop(
                            seconds / rounds,
                            concurrency,
                            batch,
                            senders[transport],
                            tallies[transport],
                            cpu,
                        )
                for transport in TRANSPORTS:
                    result = tallies[transport].measurement(transport, concurrency)
                    results.append(result)
                    print(
                        f"{transport:12s} c={concurrency:3d} {result.texts_per_s:8.1f} texts/s "
                        f"p50 {result.p50_ms:7.1f} ms p99 {result.p99_ms:7.1f} ms "
                        f"CPU {result.cpu_ms_per_text:6.2f} ms/text",
                        flush=True,
                    )
    return results


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


def section(
    results: list[Measurement], batch: int, seconds: float, rounds: int, model: str, load: float
) -> str:
    """The RESULTS.md section (`load`: the 1-min load average before the stack started)."""
    by = {(m.transport, m.concurrency): m for m in results}
    lines = [
        SECTION,
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, model {model}, {os.cpu_count()} CPUs (1-min load average "
        f"{load:.1f} before the run, {os.getloadavg()[0]:.1f} after it, the stack included), "
        f"{batch} queries per request, {seconds:.0f} s per cell in {rounds} slices taking turns "
        "with the other transports, clients in the benchmark process on the same machine. "
        "`/v1/embeddings` (aiohttp + orjson) vs gRPC `Embed` (grpc.aio); ratio = HTTP "
        "texts/s over gRPC texts/s at the same concurrency.",
        "",
        "| c | transport | texts/s | p50 ms | p99 ms | ratio vs gRPC | CPU ms/text | CPU ratio |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in CONCURRENCY:
        grpc_rate = by[("grpc", concurrency)].texts_per_s
        grpc_cpu = by[("grpc", concurrency)].cpu_ms_per_text
        for transport in TRANSPORTS:
            m = by[(transport, concurrency)]
            lines.append(
                f"| {concurrency} | {transport} | {m.texts_per_s:.1f} | {m.p50_ms:.1f} | "
                f"{m.p99_ms:.1f} | {m.texts_per_s / grpc_rate:.2f} | "
                f"{m.cpu_ms_per_text:.2f} | {grpc_cpu / m.cpu_ms_per_text:.2f} |"
            )
    saturated = max(CONCURRENCY)
    ratios = [
        by[(t, saturated)].texts_per_s / by[("grpc", saturated)].texts_per_s for t in TRANSPORTS[1:]
    ]
    cpu_ratios = [
        by[("grpc", saturated)].cpu_ms_per_text / by[(t, saturated)].cpu_ms_per_text
        for t in TRANSPORTS[1:]
    ]
    verdict = "meets" if min(ratios) >= 0.9 else "misses"
    lines += [
        "",
        f"At c = {saturated} HTTP reaches {min(ratios):.2f}-{max(ratios):.2f}x gRPC's throughput "
        f"({verdict} the 0.9x target). CPU ms/text counts every process (the clients in this "
        "process, the gateway, Triton and its stubs) over the cell; CPU ratio = gRPC's CPU "
        "per text over this transport's, what the throughput ratio tends to on a machine "
        f"saturated by the stack alone: {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f} at "
        f"c = {saturated}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each cell")
    parser.add_argument("--rounds", type=int, default=4, help="slices per cell, alternating")
    parser.add_argument("--batch", type=int, default=8, help="queries per request")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(LOADTEST))
    import httpx
    from results import replace_section

    with tempfile.TemporaryDirectory() as folder:
        load_before = os.getloadavg()[0]
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
            cpu = cpu_seconds_of([os.getpid(), process.pid])
            results = asyncio.run(
                measure(grpc_address, http_url, args.seconds, args.rounds, args.batch, cpu)
            )
        finally:
            process.terminate()
            process.wait(60)
    text = section(results, args.batch, args.seconds, args.rounds, model, load_before)
    print(text)
    if not args.no_write:
        replace_section(RESULTS, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
