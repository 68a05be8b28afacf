"""Where one request's time and CPU go on the serving path (demo model, short queries).

Starts an embedded Triton (CPU configs) and a `cde serve` gateway, makes a context set, then,
for each concurrency c, sends short queries one per request through `AsyncCdeClient` and
records per text:
- CPU seconds of every process of the path: this client process, the gateway, tritonserver
  itself and each python-backend stub (by model);
- Triton's own statistics per model (`get_inference_statistics`): queue, compute input /
  infer / output and the whole request (success) time, and the mean batch size;
- the in-process model's CPU and wall time on the same texts (batches of c) for reference.

With `--profile DIR` it also records py-spy flame graphs (speedscope JSON) of the gateway and
the stubs during one extra c=32 round.

Writes the "## Serving path breakdown" section of loadtest/RESULTS.md (unless --no-write).

    .venv/bin/python loadtest/bench_breakdown.py [--texts 1:96,32:384] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_all
import bench_gateway
import bench_triton
import corpus
import psutil
from results import replace_section

LOADTEST = Path(__file__).resolve().parent
SECTION = "## Serving path breakdown"
MODELS = ("cde_tokenize", "cde_second_stage")
STAGES = ("queue", "compute_input", "compute_infer", "compute_output", "success")


@dataclass
class Snapshot:
    cpu: dict[str, float]  # process label -> CPU seconds so far
    stats: dict[str, dict[str, float]]  # model -> stage -> ns so far; "count", "executions"


def processes(triton_pid: int, gateway_pid: int | None) -> dict[str, int]:
    """label -> pid of every server process of the path."""
    from cde_server.triton.launcher import process_group_members

    assert gateway_pid is not None
    found = {"gateway": gateway_pid}
    for pid in process_group_members(triton_pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = " ".join(psutil.Process(pid).cmdline())
            if pid == triton_pid:
                found["tritonserver"] = pid
            elif "triton_python_backend_stub" in cmdline:
                model = next((m for m in cmdline.split("/") if m.startswith("cde_")), "stub")
                label = f"stub {model}"
                while label in found:
                    label += "'"
                found[label] = pid
    return found


def snapshot(client: Any, pids: dict[str, int]) -> Snapshot:
    cpu = {"client": time.process_time()}
    cpu.update({label: bench_triton.cpu_seconds([pid]) for label, pid in pids.items()})
    stats: dict[str, dict[str, float]] = {}
    for model in MODELS:
        reply = client.get_inference_statistics(model_name=model)
        entry: dict[str, float] = {"count": 0.0, "executions": 0.0}
        for version in reply.model_stats:
            inference = version.inference_stats
            for stage in STAGES:
                entry[stage] = entry.get(stage, 0.0) + getattr(inference, stage).ns
            entry["count"] += inference.success.count
            entry["executions"] += version.execution_count
        stats[model] = entry
    return Snapshot(cpu, stats)


@dataclass
class Round:
    variant: str
    concurrency: int
    texts: int
    seconds: float
    cpu: dict[str, float]  # label -> CPU s of this round
    stats: dict[str, dict[str, float]]  # model -> stage -> ns of this round (and counts)
    in_process_s: float = 0.0
    in_process_cpu: float = 0.0


@dataclass(frozen=True)
class Variant:
    """One gateway of the run: its label, address and processes."""

    label: str
    address: str
    pids: dict[str, int]


async def measure(
    variants: Sequence[Variant], triton_url: str, plan: dict[int, int], model: Any, repeats: int
) -> list[Round]:
    """Every variant at every concurrency, `repeats` times in rotating order; the best run of
    each (and of the in-process model) is kept."""
    import numpy as np
    import tritonclient.grpc as triton_grpc
    from cde_client import AsyncCdeClient

    stats_client = triton_grpc.InferenceServerClient(triton_url.removeprefix("grpc://"))
    clients = {v.label: AsyncCdeClient(v.address, timeout=3600.0) for v in variants}
    documents = corpus.context_documents(64)
    prepared = None
    for client in clients.values():  # one store per gateway: the same set in each
        context_set, _, _ = await bench_all.ensure_context_set(client, documents)
        prepared = model.prepare_context(np.asarray(context_set.dataset_embeddings, np.float32))

    def sender(label: str) -> Any:
        async def send(texts: list[str]) -> int:
            result = await clients[label].embed(
                texts, prompt="query", context=bench_all.CONTEXT_SET
            )
            return len(result.embeddings)

        return send

    for v in variants:
        await bench_all.closed_loop(
            corpus.queries(64, min_tokens=8, max_tokens=8, seed=5), 8, sender(v.label)
        )
    best: dict[tuple[str, int], Round] = {}
    for concurrency, count in plan.items():
        in_process = (float("inf"), 0.0)
        for repeat in range(repeats):
            seed = 100 * concurrency + repeat
            texts = corpus.queries(count, min_tokens=8, max_tokens=8, seed=seed)
            order = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
            for v in order:
                before = snapshot(stats_client, v.pids)
                seconds = await bench_all.closed_loop(texts, concurrency, sender(v.label))
                after = snapshot(stats_client, v.pids)
                result = Round(
                    v.label,
                    concurrency,
                    count,
                    seconds,
                    {k: after.cpu[k] - before.cpu[k] for k in after.cpu},
                    {
                        m: {k: after.stats[m][k] - before.stats[m].get(k, 0.0)
                            for k in after.stats[m]}
                        for m in after.stats
                    },
                )  # fmt: skip
                key = (v.label, concurrency)
                if key not in best or seconds < best[key].seconds:
                    best[key] = result
                print(f"{v.label} c={concurrency}: {count / seconds:.1f} texts/s", flush=True)
            prefixed = ["search_query: " + t for t in texts]
            in_s, in_cpu, _ = bench_triton.in_process(model, prepared, prefixed, concurrency)
            in_process = min(in_process, (in_s, in_cpu))
        for v in variants:
            (
                best[(v.label, concurrency)].in_process_s,
                best[(v.label, concurrency)].in_process_cpu,
            ) = in_process
    for client in clients.values():
        await client.close()
    stats_client.close()
    return [best[(v.label, c)] for v in variants for c in plan]


async def profile_round(address: str, pids: dict[str, int], directory: Path) -> None:
    """py-spy every server process while 32 clients send queries for a few seconds."""
    from cde_client import AsyncCdeClient

    directory.mkdir(parents=True, exist_ok=True)
    client = AsyncCdeClient(address, timeout=3600.0)
    spy = str(Path(sys.executable).parent / "py-spy")
    spies = [
        subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", "8", "--rate", "200", "--nonblocking",
             "--format", "speedscope", "-o", str(directory / f"{label.replace(' ', '_')}.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for label, pid in pids.items()
        if label != "tritonserver"
    ]  # fmt: skip

    async def send(texts: list[str]) -> int:
        result = await client.embed(texts, prompt="query", context=bench_all.CONTEXT_SET)
        return len(result.embeddings)

    deadline = time.monotonic() + 9
    seed = 100
    while time.monotonic() < deadline:
        seed += 1
        await bench_all.closed_loop(
            corpus.queries(128, min_tokens=8, max_tokens=8, seed=seed), 32, send
        )
    for process in spies:
        process.wait(30)
    await client.close()


def table(rounds: Sequence[Round]) -> list[str]:
    labels = sorted({label for r in rounds for label in r.cpu}, key=_order)
    header = "| | " + " | ".join(f"{r.variant} c={r.concurrency}" for r in rounds) + " |"
    lines = [header, "|---|" + "---:|" * len(rounds)]

    def row(name: str, values: Sequence[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row("texts/s (full stack)", [f"{r.texts / r.seconds:.0f}" for r in rounds])
    row("texts/s (in-process, batches of c)", [f"{r.texts / r.in_process_s:.0f}" for r in rounds])
    row("ms per request (full stack, wall)", [_ms(r.seconds * r.concurrency, r) for r in rounds])
    for label in labels:
        row(f"CPU ms/text: {label}", [_ms(r.cpu.get(label, 0.0), r) for r in rounds])
    row("CPU ms/text: **all processes**", [f"**{_ms(sum(r.cpu.values()), r)}**" for r in rounds])
    row("CPU ms/text: in-process model", [_ms(r.in_process_cpu, r) for r in rounds])
    row(
        "**serving overhead, CPU ms/text**",
        [f"**{_ms(sum(r.cpu.values()) - r.in_process_cpu, r)}**" for r in rounds],
    )
    for model in MODELS:
        if not any(r.stats[model]["count"] for r in rounds):
            row(f"{model}", ["not called" for _ in rounds])
            continue
        for stage in STAGES:
            name = "request (success)" if stage == "success" else stage.replace("_", " ")
            row(f"{model}: {name} ms", [_per(r.stats[model], stage) for r in rounds])
        row(f"{model}: mean batch", [
            f"{r.stats[model]['count'] / max(r.stats[model]['executions'], 1):.1f}" for r in rounds
        ])  # fmt: skip
    return lines


def _ms(seconds: float, r: Round) -> str:
    """`seconds` of the whole round as milliseconds per text."""
    return f"{1e3 * seconds / r.texts:.3f}"


def _per(stats: dict[str, float], stage: str) -> str:
    count = stats["count"]
    return f"{stats[stage] / count / 1e6:.3f}" if count else "-"


def _order(label: str) -> tuple[int, str]:
    first = ("client", "gateway", "tritonserver")
    return (first.index(label), label) if label in first else (len(first), label)


def run(
    plan: dict[int, int], profile: Path | None, variants: dict[str, dict[str, str]], repeats: int
) -> list[Round]:
    from cde_model import load_model
    from cde_server.triton.launcher import TritonProcess

    model = load_model("demo", dtype="float32", device="cpu")
    gateways: list[subprocess.Popen[str]] = []
    with (
        tempfile.TemporaryDirectory(prefix="cde-breakdown-") as scratch,
        TritonProcess(bench_triton.triton_settings(Path("demo"), "float32")) as triton,
    ):
        try:
            assert triton.pid is not None
            started = []
            for label, settings in variants.items():
                saved = dict(os.environ)
                os.environ.update(settings)
                try:
                    gateway, address = bench_gateway.start_gateway(
                        triton.grpc_url, Path(scratch) / f"{len(gateways)}.db", "direct"
                    )
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                gateways.append(gateway)
                started.append(Variant(label, address, processes(triton.pid, gateway.pid)))
            rounds = asyncio.run(measure(started, triton.grpc_url, plan, model, repeats))
            if profile is not None:
                for variant in started:
                    asyncio.run(
                        profile_round(variant.address, variant.pids, profile / variant.label)
                    )
        finally:
            for gateway in gateways:
                gateway.terminate()
                gateway.wait(60)
    return rounds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", default="1:96,32:384", help="c:texts,...")
    parser.add_argument("--profile", type=Path, help="write py-spy flame graphs here")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="LABEL or LABEL:VAR=value,VAR=value: one gateway with these settings (repeatable; "
        "default: one gateway as configured)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell (best kept)")
    parser.add_argument("--label", default="", help="what this run measures (for the section)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    plan = {int(c): int(n) for c, n in (part.split(":") for part in args.texts.split(","))}
    variants: dict[str, dict[str, str]] = {}
    for item in args.variant or ["gateway"]:
        label, _, assignments = item.partition(":")
        variants[label] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    load = os.getloadavg()[0]
    rounds = run(plan, args.profile, variants, args.repeats)
    lines = table(rounds)
    print("\n".join(lines))
    if not args.no_write:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        intro = (
            f"`loadtest/bench_breakdown.py` on {when}{': ' + args.label if args.label else ''}. "
            "Demo model, CPU configs, one short query (8 tokens) per request through "
            "`AsyncCdeClient` → `cde serve` → embedded Triton; Triton's times from its "
            f"statistics; 2 shared cores, 1-min load average {load:.1f} → "
            f"{os.getloadavg()[0]:.1f}."
        )
        replace_section(LOADTEST / "RESULTS.md", SECTION, "\n".join([SECTION, "", intro, "",
                                                                      *lines, ""]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
