"""Store footprint: stored bytes per context set, compact layout vs N copies, on a real stack.

For each model (the full-size random checkpoint, created if missing, and the demo), an embedded
Triton and an in-process gateway on a fresh SQLite store take `--sets` CreateContextSet calls,
each from a small source (`--documents` documents of `--document-bytes` bytes: oversampled
to the model's N). Reported per set: the bytes sent, the bytes the store holds for it now
(`Store.usage`: distinct rows, distinct documents, sample indices), what the layout before
schema version 3 held (N embedding rows + a JSON array of N documents, computed from the set
read back), and the growth of the SQLite file (with its WAL). Results replace the
"## Store footprint" section of loadtest/RESULTS.md.

    .venv/bin/python loadtest/bench_store.py [--checkpoint .cache/cde-full] [--sets 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from results import replace_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtest" / "RESULTS.md"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Footprint:
    model: str
    n: int
    dim: int
    sets: int
    sent: int
    stored: int
    legacy: int
    file_growth: int
    seconds: float


def source(set_index: int, documents: int, size: int) -> list[str]:
    """`documents` distinct documents of about `size` UTF-8 bytes for set `set_index`."""
    words = [f"set{set_index}-doc{d}-word{w}" for d in range(documents) for w in range(size)]
    per = len(words) // documents
    return [" ".join(words[d * per : (d + 1) * per])[:size] for d in range(documents)]


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


async def measure(model: str, triton_url: str, args: argparse.Namespace) -> Footprint:
    from cde_client import AsyncCdeClient
    from cde_server.gateway.app import Gateway
    from cde_server.gateway.settings import GatewaySettings
    from cde_server.stores import open_store

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "store.db"
        settings = GatewaySettings(
            host="127.0.0.1",
            port=0,
            http_port=None,
            metrics_port=None,
            store=f"sqlite://{path}",
            triton_url=triton_url,
            log_level="WARNING",
            warm_up_default_context=False,
        )
        gateway = Gateway(settings)
        await gateway.start()
        try:
            empty = file_bytes(path)
            sent = legacy = 0
            n = dim = 0
            started = time.perf_counter()
            async with AsyncCdeClient(gateway.address) as client:
                for index in range(args.sets):
                    documents = source(index, args.documents, args.document_bytes)
                    sent += sum(len(d.encode()) for d in documents)
                    await client.create_context_set(f"set-{index}", documents)
                    read = await client.get_context_set(f"set-{index}", include_documents=True)
                    rows = await client.get_context_set(f"set-{index}", include_embeddings=True)
                    assert read.documents is not None and rows.dataset_embeddings is not None
                    n, dim = rows.dataset_embeddings.shape
                    legacy += rows.dataset_embeddings.nbytes + len(
                        json.dumps(list(read.documents), ensure_ascii=False).encode()
                    )
            seconds = time.perf_counter() - started
            growth = file_bytes(path) - empty
        finally:
            await gateway.stop(1.0)
        store = await open_store(f"sqlite://{path}")
        try:  # -1: a server from before schema version 3 (--no-write runs only)
            stored = (await store.usage("")).stored_bytes if hasattr(store, "usage") else -1
        finally:
            await store.close()
    return Footprint(model, n, dim, args.sets, sent, stored, legacy, growth, seconds)


def run_model(model: str, label: str, args: argparse.Namespace) -> Footprint:
    from cde_server.triton.launcher import TritonProcess, free_ports
    from cde_server.triton.settings import TritonSettings

    grpc_port, http_port, metrics_port = free_ports(3)
    settings = TritonSettings(
        model=model,
        triton_grpc_port=grpc_port,
        triton_http_port=http_port,
        triton_metrics_port=metrics_port,
        triton_exit_timeout_s=5,
    )
    with TritonProcess(settings) as triton:
        footprint = asyncio.run(measure(label, triton.grpc_url, args))
    print(footprint, flush=True)
    return footprint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / ".cache" / "cde-full")
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--documents", type=int, default=3, help="distinct documents per set")
    parser.add_argument("--document-bytes", type=int, default=20480)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    from cde_model.random_checkpoint import write_random_checkpoint

    if not (args.checkpoint / "config.json").is_file():
        print(f"writing a full-size random checkpoint to {args.checkpoint}", flush=True)
        write_random_checkpoint(args.checkpoint, size="full", seed=0)
    footprints = [
        run_model(str(args.checkpoint), "full-size random checkpoint", args),
        run_model("demo", "demo", args),
    ]
    lines = [
        "## Store footprint",
        "",
        f"`loadtest/bench_store.py` on {datetime.now(UTC):%Y-%m-%d} (shared machine, CPU "
        f"configs): {args.sets} CreateContextSet calls per model through a gateway on a fresh "
        f"SQLite store, each from {args.documents} documents of {args.document_bytes} bytes "
        "(oversampled to the model's N). Per context set: bytes sent; bytes stored now "
        "(distinct embedding rows, distinct documents, sample indices: what the tenant quota "
        "counts); what the layout before schema version 3 stored (N rows + N documents); and "
        "the growth of the SQLite file with its WAL.",
        "",
        "| model | N x dim | sent / set | stored / set (v3) | stored / set before (N copies) | "
        "before / v3 | file growth / set | stored / sent |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in footprints:
        lines.append(
            f"| {f.model} | {f.n} x {f.dim} | {f.sent / f.sets / 1024:.1f} KiB | "
            f"{f.stored / f.sets / 1024:.1f} KiB | {f.legacy / f.sets / MIB:.2f} MiB | "
            f"x{f.legacy / f.stored:.1f} | {f.file_growth / f.sets / 1024:.1f} KiB | "
            f"x{f.stored / f.sent:.2f} |"
        )
    if not args.no_write:
        replace_section(RESULTS, "## Store footprint", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
