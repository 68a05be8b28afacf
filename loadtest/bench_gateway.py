"""Gateway overhead at saturation: texts/s through the gRPC gateway vs straight to Triton.

A full-size random checkpoint (created if missing) is served by the embedded Triton; a gateway
runs as its own process (`cde serve` with CDE_TRITON_URL). A context set is created through the
gateway; its CONTEXT_ID is then used by both sides. In each round both sides run *at the same
time* for a fixed duration, c closed-loop clients each, every request carrying b short queries:
one side sends them to Triton the way the gateway does (cde_tokenize + cde_second_stage, or the
cde_embed ensemble with --path ensemble), the other as cde.v1 Embed calls to the gateway. Both
share Triton's queue, so each side's throughput is set by its own request latency, and other load
on the machine hits both alike. Texts of requests cut by the round's end count in proportion to
their time inside the round. The CPU time of the gateway process vs Triton's is reported too.

Also measured: decoding an embedding response as raw little-endian bytes (cde.v1 Matrix) vs
as `repeated float`. Results replace the "## Gateway" section of loadtest/RESULTS.md.

    .venv/bin/python loadtest/bench_gateway.py [--checkpoint .cache/cde-full] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_triton
import numpy as np
import numpy.typing as npt
from results import replace_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtest" / "RESULTS.md"
WORDS = (
    "search", "index", "query", "vector", "model", "context", "document", "embedding",
    "server", "batch", "cache", "token", "latency", "throughput", "gradient", "corpus",
)  # fmt: skip
QUERY_PREFIX = "search_query: "


@dataclass(frozen=True)
class Round:
    seconds: float
    triton_texts: float  # texts credited to the round (partial requests in proportion)
    gateway_texts: float
    gateway_cpu_s: float  # CPU time the gateway process used during the round
    triton_cpu_s: float  # CPU time of tritonserver and its stubs during the round

    @property
    def ratio(self) -> float:
        """Gateway texts/s over Triton-direct texts/s."""
        return self.gateway_texts / self.triton_texts


@dataclass(frozen=True)
class Processes:
    """Whose CPU time to account: the gateway process and Triton's process group."""

    gateway_pid: int
    triton_pgid: int

    def cpu_seconds(self) -> tuple[float, float]:
        """(gateway, Triton) user+system CPU seconds so far."""
        return (
            bench_triton.cpu_seconds([self.gateway_pid]),
            bench_triton.group_cpu_seconds(self.triton_pgid),
        )


def make_queries(count: int, seed: int) -> list[str]:
    """Short queries of 6-14 words (without prefix), deterministic."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 15)))) for _ in range(count)]


async def timed_loop(
    seconds: float,
    concurrency: int,
    batch: int,
    seed: int,
    send: Callable[[list[str]], Awaitable[int]],
) -> float:
    """Texts done by `concurrency` closed-loop clients within `seconds` from now; a request cut
    by the end counts for the part of its duration inside the window."""
    started = time.perf_counter()
    end = started + seconds
    credited = 0.0

    async def client(index: int) -> None:
        nonlocal credited
        request = 0
        while time.perf_counter() < end:
            texts = make_queries(batch, seed * 100_000 + index * 1000 + request)
            request += 1
            sent = time.perf_counter()
            rows = await send(texts)
            if rows != len(texts):
                raise AssertionError(f"{rows} rows for {len(texts)} texts")
            done = time.perf_counter()
            inside = (min(done, end) - sent) / max(done - sent, 1e-9)
            credited += len(texts) * inside

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return credited


class TritonSide:
    """Sends a request of texts to Triton the way the gateway's backend does."""

    def __init__(self, url: str, context_id: str, path: str) -> None:
        from cde_server.inference.interface import ContextRef
        from cde_server.inference.triton_endpoint import TritonEndpoint

        async def never() -> npt.NDArray[np.float32]:
            raise AssertionError("the context should be cached in Triton")

        self.backend = TritonEndpoint(url, embed_path=path, timeout_s=3600.0)
        self.context = ContextRef(context_id, never)

    async def send(self, texts: list[str]) -> int:
        encoded = await self.backend.embed(
            [QUERY_PREFIX + t for t in texts], self.context, max_tokens=512
        )
        vectors = encoded.vectors / np.linalg.norm(encoded.vectors, axis=1, keepdims=True)
        return int(vectors.shape[0])


class GatewaySide:
    """Sends a request of texts as one cde.v1 Embed call."""

    def __init__(self, address: str, context_set: str) -> None:
        import grpc
        from cde.v1 import embedding_service_pb2_grpc as pb_grpc

        self.channel = grpc.aio.insecure_channel(address)
        self.stub = pb_grpc.EmbeddingServiceStub(self.channel)
        self.context_set = context_set

    async def send(self, texts: list[str]) -> int:
        from cde.v1 import embedding_service_pb2 as pb

        response = await self.stub.Embed(
            pb.EmbedRequest(texts=texts, prompt="query", context_set=self.context_set)
        )
        matrix = np.frombuffer(response.embeddings.data, dtype="<f4")
        return int(matrix.reshape(response.embeddings.rows, response.embeddings.dim).shape[0])


def start_gateway(triton_url: str, store: Path, path: str) -> tuple[subprocess.Popen[str], str]:
    """`cde serve` against Triton; returns the process and its address once it is ready."""
    from cde_server.triton.launcher import free_ports

    port, metrics_port = free_ports(2)
    env = dict(os.environ)
    env.update(
        CDE_TRITON_URL=triton_url,
        CDE_PORT=str(port),
        CDE_METRICS_PORT=str(metrics_port),
        CDE_HTTP_PORT="off",  # gRPC only (8080 may be taken)
        CDE_STORE=f"sqlite://{store}",
        CDE_EMBED_PATH=path,
        CDE_LOG_LEVEL="WARNING",
        CDE_TRITON_TIMEOUT_S="3600",
        CDE_WARM_UP_DEFAULT_CONTEXT="false",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cde_server.cli.main", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "gateway ready" in line:
            return process, f"127.0.0.1:{port}"
    raise RuntimeError(f"the gateway exited with status {process.wait()}")


async def create_context_set(address: str, name: str, documents: Sequence[str]) -> str:
    """Create the set through the gateway; returns its context id."""
    import grpc
    from cde.v1 import embedding_service_pb2 as pb
    from cde.v1 import embedding_service_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)

        async def messages() -> Any:
            yield pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=name, replace=True))
            yield pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=documents))

        response = await stub.CreateContextSet(messages())
        return str(response.context_set.context_id)


def decode_speed(rows: int, dim: int, repeats: int) -> tuple[float, float]:
    """Microseconds to parse + decode one [rows, dim] response: (raw bytes, repeated float)."""
    from cde.v1 import embedding_service_pb2 as pb
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="bench_floats.proto", package="bench")
    message = file.message_type.add(name="FloatRows")
    message.field.add(
        name="values",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    float_rows: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.FloatRows"))
    values = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    raw_wire = pb.Matrix(data=values.tobytes(), rows=rows, dim=dim).SerializeToString()
    repeated_wire = float_rows(values=values.reshape(-1).tolist()).SerializeToString()

    def raw() -> npt.NDArray[np.float32]:
        parsed = pb.Matrix.FromString(raw_wire)
        return np.frombuffer(parsed.data, dtype="<f4").reshape(parsed.rows, parsed.dim)

    def repeated() -> npt.NDArray[np.float32]:
        parsed: Any = float_rows.FromString(repeated_wire)
        return np.array(parsed.values, dtype=np.float32).reshape(rows, dim)

    assert np.array_equal(raw(), repeated())
    timings = []
    for decode in (raw, repeated):
        started = time.perf_counter()
        for _ in range(repeats):
            decode()
        timings.append((time.perf_counter() - started) / repeats * 1e6)
    return timings[0], timings[1]


def machine_load() -> str:
    load1, _, _ = os.getloadavg()
    return f"{os.cpu_count()} cores, 1-min load average {load1:.1f}"


async def run_rounds(
    triton: TritonSide, gateway: GatewaySide, processes: Processes, args: argparse.Namespace
) -> list[Round]:
    """Concurrent rounds (both sides at once) after a warm-up of each side."""
    await gateway.send(make_queries(args.batch, 1001))  # primes Triton's context cache
    await triton.send(make_queries(args.batch, 1000))
    rounds = []
    for index in range(args.rounds):
        gateway_cpu0, triton_cpu0 = processes.cpu_seconds()
        triton_texts, gateway_texts = await asyncio.gather(
            timed_loop(args.seconds, args.concurrency, args.batch, 2 * index, triton.send),
            timed_loop(args.seconds, args.concurrency, args.batch, 2 * index + 1, gateway.send),
        )
        gateway_cpu1, triton_cpu1 = processes.cpu_seconds()
        rounds.append(
            Round(
                args.seconds,
                triton_texts,
                gateway_texts,
                gateway_cpu1 - gateway_cpu0,
                triton_cpu1 - triton_cpu0,
            )
        )
        r = rounds[-1]
        print(
            f"round {index}: Triton {r.triton_texts / r.seconds:.3f} texts/s, gateway "
            f"{r.gateway_texts / r.seconds:.3f} texts/s, ratio {r.ratio:.3f}",
            flush=True,
        )
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / ".cache" / "cde-full")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--path", choices=["direct", "ensemble"], default="direct")
    parser.add_argument("--concurrency", type=int, default=2, help="clients per side")
    parser.add_argument("--batch", type=int, default=2, help="texts per request")
    parser.add_argument("--seconds", type=float, default=150.0, help="length of a round")
    parser.add_argument("--rounds", type=int, default=4, help="concurrent rounds")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    from cde_model.random_checkpoint import write_random_checkpoint
    from cde_server.triton.launcher import TritonProcess, free_ports
    from cde_server.triton.settings import TritonSettings

    raw_us, repeated_us = decode_speed(64, 768, 200)
    print(f"decode 64x768: raw bytes {raw_us:.0f} us, repeated float {repeated_us:.0f} us")
    if not (args.checkpoint / "config.json").is_file():
        print(f"writing a full-size random checkpoint to {args.checkpoint}", flush=True)
        write_random_checkpoint(args.checkpoint, size="full", seed=0)
    load_start = machine_load()
    started = time.perf_counter()
    grpc_port, http_port, metrics_port = free_ports(3)
    settings = TritonSettings(
        model=str(args.checkpoint),
        dtype=args.dtype,
        triton_grpc_port=grpc_port,
        triton_http_port=http_port,
        triton_metrics_port=metrics_port,
        triton_exit_timeout_s=5,
    )
    store = REPO / ".cache" / "bench-gateway.db"
    with TritonProcess(settings) as triton_process:
        gateway_process, address = start_gateway(triton_process.grpc_url, store, args.path)
        try:

            async def scenario() -> tuple[list[Round], float]:
                documents = [f"document {i}: " + " ".join(make_queries(1, i)) for i in range(600)]
                set_started = time.perf_counter()
                context_id = await create_context_set(address, "bench", documents)
                set_seconds = time.perf_counter() - set_started
                print(f"context set from 600 documents in {set_seconds:.1f} s", flush=True)
                triton = TritonSide(triton_process.grpc_url, context_id, args.path)
                gateway = GatewaySide(address, "bench")
                try:
                    processes = Processes(gateway_process.pid, triton_process.pid or 0)
                    return await run_rounds(triton, gateway, processes, args), set_seconds
                finally:
                    await triton.backend.close()
                    await gateway.channel.close()

            rounds, set_seconds = asyncio.run(scenario())
        finally:
            gateway_process.terminate()
            gateway_process.wait(30)
    total_s = time.perf_counter() - started

    triton_total = sum(r.triton_texts for r in rounds)
    gateway_total = sum(r.gateway_texts for r in rounds)
    overhead = 1.0 - gateway_total / triton_total
    gateway_cpu = sum(r.gateway_cpu_s for r in rounds)
    triton_cpu = sum(r.triton_cpu_s for r in rounds)
    cpu_share = gateway_cpu / (gateway_cpu + triton_cpu)
    print(f"gateway overhead {overhead:+.1%} (target <= 5%); gateway CPU share {cpu_share:.2%}")
    lines = [
        "## Gateway",
        "",
        f"`loadtest/bench_gateway.py` on {datetime.now(UTC):%Y-%m-%d}: full-size random "
        f"checkpoint, {args.dtype}, CPU configs. Each round runs both sides at the same time for "
        f"{args.seconds:.0f} s, {args.concurrency} closed-loop clients each, {args.batch} queries "
        f"(6-14 words) per request, on one context (a set of 512 sampled from 600 documents). "
        f"Triton side: `TritonEndpoint` ({args.path} path) straight to Triton; gateway side: "
        "cde.v1 `Embed` to a separate `cde serve` process in front of the same Triton. Running "
        "both at once makes machine-load swings hit both sides alike.",
        "",
        "| round | Triton texts/s | gateway texts/s | gateway / Triton | gateway CPU s | "
        "Triton CPU s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for index, r in enumerate(rounds):
        lines.append(
            f"| {index} | {r.triton_texts / r.seconds:.3f} | {r.gateway_texts / r.seconds:.3f} | "
            f"{r.ratio:.3f} | {r.gateway_cpu_s:.2f} | {r.triton_cpu_s:.0f} |"
        )
    lines += [
        "",
        f"**Gateway overhead at saturation: {overhead:+.1%}** (1 - gateway/Triton texts over "
        f"all rounds; target <= 5%). The gateway process used {gateway_cpu:.2f} CPU s "
        f"({gateway_cpu / gateway_total * 1000:.1f} ms per text) against Triton's "
        f"{triton_cpu:.0f} CPU s: **{cpu_share:.2%} of the serving CPU time**, the most "
        "throughput it can take from Triton on a CPU-bound host.",
        "",
        f"Response decoding, 64 x 768 float32 (parse + to numpy, mean of 200): raw bytes "
        f"(`Matrix`) {raw_us:.0f} us vs `repeated float` {repeated_us:.0f} us "
        f"({repeated_us / raw_us:.0f}x slower).",
        "",
        f"CreateContextSet (600 documents → 512, stage 1 on Triton): {set_seconds:.0f} s. "
        f"Machine: {load_start} at the start, {machine_load()} at the end; whole run "
        f"{total_s:.0f} s.",
        "",
    ]
    if not args.no_write:
        replace_section(RESULTS, "## Gateway", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
