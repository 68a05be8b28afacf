"""Texts/s through Triton (gRPC) vs the in-process model on the same batches.

Part 1, throughput: a full-size random checkpoint (created if missing) on the embedded Triton.
At each concurrency c, c closed-loop clients send one query per request through the
`cde_embed` ensemble; the in-process model then embeds the same texts in batches of c
(tokenize + second stage). Wall-clock texts/s are compared, and so is CPU time per text
(Triton's whole process group vs this process), which other work on the machine disturbs less.

Part 2, serving overhead: the tiny checkpoint, whose compute is negligible, so requests/s show
what each path costs: the `cde_embed` ensemble vs direct calls (cde_tokenize, then
cde_second_stage) at the same concurrencies.

Results replace the "## Triton" section of loadtest/RESULTS.md.

    .venv/bin/python loadtest/bench_triton.py [--checkpoint .cache/cde-full] [--scale 1]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil
from cde_server.triton import protocol as tp
from results import replace_section

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "loadtest" / "RESULTS.md"
TINY = REPO.parent / "shared" / "fixtures" / "cde-tiny"
CONCURRENCIES = (1, 8, 32)
WORDS = (
    "search", "index", "query", "vector", "model", "context", "document", "embedding",
    "server", "batch", "cache", "token", "latency", "throughput", "gradient", "corpus",
    "retrieval", "ranking", "cosine", "triton", "python",
)  # fmt: skip

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class ThroughputRow:
    concurrency: int
    texts: int
    triton_tps: float
    local_tps: float
    triton_cpu_per_text: float
    local_cpu_per_text: float
    mean_batch: float


@dataclass(frozen=True)
class OverheadRow:
    concurrency: int
    requests: int
    ensemble_rps: float
    direct_rps: float


def make_texts(count: int, seed: int) -> list[str]:
    """Short queries of 6-14 words, deterministic."""
    rng = np.random.default_rng(seed)
    return [
        "search_query: " + " ".join(rng.choice(WORDS, size=int(rng.integers(6, 15))))
        for _ in range(count)
    ]


def infer_inputs(names_values: Sequence[tuple[str, Array, str]]) -> list[Any]:
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, values, dtype in names_values:
        tensor = grpcclient.InferInput(name, list(values.shape), dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(values))
        inputs.append(tensor)
    return inputs


class Client:
    """One gRPC connection; embeds one text by the ensemble or the direct path."""

    def __init__(self, url: str, context: str) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.client.is_server_live()  # connect now, not inside a measurement
        self.context = context

    def embed(self, text: str, path: str, dataset: Array | None = None) -> Array:
        context = [(tp.CONTEXT_ID, tp.context_id_tensor(self.context, 1), "BYTES")]
        if dataset is not None:
            context.append((tp.DATASET_EMBEDDINGS, dataset[None], "FP32"))
        if path == "ensemble":
            inputs = infer_inputs([(tp.TEXT, tp.text_tensor([text]), "BYTES"), *context])
            result = self.client.infer(tp.EMBED_ENSEMBLE, inputs)
        else:
            tokens = self.client.infer(
                tp.TOKENIZE_MODEL, infer_inputs([(tp.TEXT, tp.text_tensor([text]), "BYTES")])
            )
            ids = (tp.INPUT_IDS, tokens.as_numpy(tp.INPUT_IDS), "INT64")
            mask = (tp.ATTENTION_MASK, tokens.as_numpy(tp.ATTENTION_MASK), "INT64")
            result = self.client.infer(tp.SECOND_STAGE_MODEL, infer_inputs([ids, mask, *context]))
        return np.asarray(result.as_numpy(tp.EMBEDDING))

    def close(self) -> None:
        self.client.close()


def run_clients(
    url: str, context: str, texts: Sequence[str], concurrency: int, path: str
) -> tuple[float, list[Array]]:
    """Closed loop: `concurrency` clients drain `texts`; (seconds, embeddings in text order)."""
    work: queue.Queue[int] = queue.Queue()
    for index in range(len(texts)):
        work.put(index)
    results: dict[int, Array] = {}
    errors: list[BaseException] = []
    clients = [Client(url, context) for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(client: Client) -> None:
        barrier.wait()
        while True:
            try:
                index = work.get_nowait()
            except queue.Empty:
                return
            try:
                results[index] = client.embed(texts[index], path)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    if errors:
        raise errors[0]
    return elapsed, [results[i] for i in range(len(texts))]


def second_stage_counts(url: str) -> tuple[int, int]:
    """(inference_count, execution_count) of cde_second_stage."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(tp.SECOND_STAGE_MODEL, as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by those of `pids` still alive (all threads)."""
    used = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            used += times.user + times.system
    return used


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds used so far by the live processes of process group `pgid`."""
    from cde_server.triton.launcher import process_group_members

    return cpu_seconds(process_group_members(pgid))


def in_process(
    model: Any, context: Any, texts: Sequence[str], batch: int
) -> tuple[float, float, Array]:
    """(wall s, CPU s, embeddings) to tokenize + embed `texts` in batches of `batch`."""
    import torch

    outputs = []
    cpu = time.process_time()
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            ids, mask = model.tokenizer.encode(texts[start : start + batch])
            outputs.append(model.second_stage(ids, mask, context).numpy())
    wall = time.perf_counter() - started
    return wall, time.process_time() - cpu, np.concatenate(outputs)


@dataclass(frozen=True)
class Run:
    wall: float  # seconds
    cpu: float  # CPU seconds (Triton: its whole process group)
    embeddings: Array
    mean_batch: float  # second-stage inferences per execution (Triton runs)


def triton_run(url: str, pgid: int, context: str, texts: Sequence[str], concurrency: int) -> Run:
    """One closed-loop pass of `texts` through the cde_embed ensemble."""
    inferences, executions = second_stage_counts(url)
    cpu = group_cpu_seconds(pgid)
    wall, served = run_clients(url, context, texts, concurrency, "ensemble")
    used = group_cpu_seconds(pgid) - cpu
    inferences2, executions2 = second_stage_counts(url)
    batch = (inferences2 - inferences) / max(executions2 - executions, 1)
    return Run(wall, used, np.concatenate(served), batch)


def throughput(checkpoint: Path, dtype: str, scale: int) -> tuple[list[ThroughputRow], str]:
    """Part 1 on the full-size checkpoint; rows and a line on start-up."""
    from cde_model import load_model
    from cde_server.triton.launcher import TritonProcess

    started = time.perf_counter()
    model = load_model(str(checkpoint), dtype=dtype, device="cpu")
    rng = np.random.default_rng(0)
    dataset = rng.standard_normal((model.info.corpus_size, model.info.hidden_size))
    dataset = dataset.astype(np.float32)
    context = tp.context_id(dataset)
    prepared = model.prepare_context(dataset)
    rows: list[ThroughputRow] = []
    with TritonProcess(triton_settings(checkpoint, dtype)) as triton:
        assert triton.pid is not None
        startup = (
            f"start-up (model in-process + Triton ready) {time.perf_counter() - started:.0f} s"
        )
        warm = Client(triton.grpc_url, context)  # fill the context cache, warm both paths
        warm.embed(make_texts(1, 99)[0], "ensemble", dataset)
        warm.close()
        in_process(model, prepared, make_texts(1, 98), 1)
        for concurrency in CONCURRENCIES:
            count = (2 if concurrency == 1 else concurrency) * scale
            texts = make_texts(count, concurrency)
            served: list[Run] = []
            local: list[Run] = []
            for side in ("triton", "local", "local", "triton"):  # ABBA: cancels a load drift
                if side == "triton":
                    served.append(
                        triton_run(triton.grpc_url, triton.pid, context, texts, concurrency)
                    )
                else:
                    wall, cpu, embeddings = in_process(model, prepared, texts, concurrency)
                    local.append(Run(wall, cpu, embeddings, 0.0))
            difference = float(np.abs(served[0].embeddings - local[0].embeddings).max())
            if difference > 1e-3:
                raise AssertionError(f"Triton and in-process results differ by {difference}")
            row = ThroughputRow(  # best of two: the run least disturbed by other work
                concurrency,
                count,
                count / min(r.wall for r in served),
                count / min(r.wall for r in local),
                min(r.cpu for r in served) / count,
                min(r.cpu for r in local) / count,
                sum(r.mean_batch for r in served) / len(served),
            )
            rows.append(row)
            print(
                f"c={concurrency:<3d} texts={count:<3d} Triton {row.triton_tps:.3f}/s "
                f"in-process {row.local_tps:.3f}/s ratio {row.triton_tps / row.local_tps:.3f}; "
                f"CPU s/text {row.triton_cpu_per_text:.2f} vs {row.local_cpu_per_text:.2f}; "
                f"mean batch {row.mean_batch:.1f}; runs "
                + " ".join(f"{r.wall:.1f}s" for r in (served[0], *local, served[1])),
                flush=True,
            )
    return rows, startup


def overhead(requests_per_client: int) -> list[OverheadRow]:
    """Part 2 on the tiny checkpoint: requests/s of the ensemble and the direct path."""
    from cde_server.triton.launcher import TritonProcess

    rows = []
    dataset = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    context = tp.context_id(dataset)
    with TritonProcess(triton_settings(TINY, "float32")) as triton:
        warm = Client(triton.grpc_url, context)
        warm.embed("search_query: warm", "ensemble", dataset)
        warm.close()
        for concurrency in CONCURRENCIES:
            count = max(requests_per_client * concurrency, 64)
            texts = make_texts(count, 1000 + concurrency)
            rates: dict[str, float] = {}
            for path in ("ensemble", "direct", "ensemble", "direct"):  # best of two each
                wall, _ = run_clients(triton.grpc_url, context, texts, concurrency, path)
                rates[path] = max(rates.get(path, 0.0), count / wall)
            rows.append(OverheadRow(concurrency, count, rates["ensemble"], rates["direct"]))
            print(
                f"tiny c={concurrency:<3d} requests={count:<4d} ensemble {rates['ensemble']:.0f}/s "
                f"direct {rates['direct']:.0f}/s",
                flush=True,
            )
    return rows


def triton_settings(checkpoint: Path, dtype: str) -> Any:
    """Embedded Triton on CPU configs and free ports."""
    from cde_server.triton.launcher import free_ports
    from cde_server.triton.settings import TritonSettings

    grpc_port, http_port, metrics_port = free_ports(3)
    return TritonSettings.model_validate(
        {
            "model": str(checkpoint),
            "dtype": dtype,
            "triton_device": "cpu",
            "triton_grpc_port": grpc_port,
            "triton_http_port": http_port,
            "triton_metrics_port": metrics_port,
            "triton_exit_timeout_s": 5,
        }
    )


def load_note() -> str:
    load1, _, _ = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = " (busy)" if load1 > cores * 0.75 else ""
    return f"{load1:.1f}{busy}"


def section(
    throughput_rows: Sequence[ThroughputRow],
    overhead_rows: Sequence[OverheadRow],
    notes: Sequence[str],
) -> str:
    lines = [
        "## Triton",
        "",
        f"`loadtest/bench_triton.py`, {datetime.now(UTC):%Y-%m-%d}. CPU configs, one query "
        "(6-14 words) per gRPC request, closed loop with c clients.",
        "",
        "Throughput, full-size random checkpoint (768 hidden, N=512, float32), `cde_embed` "
        "ensemble vs the in-process model on the same texts in batches of c (tokenize + second "
        "stage). Each side ran twice (Triton, in-process, in-process, Triton); the best run "
        "of each is shown. CPU s/text: Triton's whole process group vs the in-process run.",
        "",
        "| c | texts | Triton texts/s | in-process texts/s | ratio | Triton CPU s/text | "
        "in-process CPU s/text | CPU ratio | mean batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in throughput_rows:
        lines.append(
            f"| {r.concurrency} | {r.texts} | {r.triton_tps:.3f} | {r.local_tps:.3f} | "
            f"{r.triton_tps / r.local_tps:.3f} | {r.triton_cpu_per_text:.2f} | "
            f"{r.local_cpu_per_text:.2f} | {r.local_cpu_per_text / r.triton_cpu_per_text:.3f} | "
            f"{r.mean_batch:.1f} |"
        )
    lines += [
        "",
        "Serving overhead, tiny checkpoint (compute negligible): requests/s of the `cde_embed` "
        "ensemble vs direct calls (`cde_tokenize`, then `cde_second_stage`), best of two runs.",
        "",
        "| c | requests | ensemble req/s | direct req/s | direct / ensemble |",
        "|---:|---:|---:|---:|---:|",
    ]
    for o in overhead_rows:
        lines.append(
            f"| {o.concurrency} | {o.requests} | {o.ensemble_rps:.0f} | {o.direct_rps:.0f} | "
            f"{o.direct_rps / o.ensemble_rps:.2f} |"
        )
    lines += ["", *notes, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / ".cache" / "cde-full")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--scale", type=int, default=1, help="multiply the texts per level")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if not (args.checkpoint / "config.json").is_file():
        from cde_model.random_checkpoint import write_random_checkpoint

        print(f"writing a full-size random checkpoint to {args.checkpoint}", flush=True)
        write_random_checkpoint(args.checkpoint, size="full", seed=0)
    started = time.perf_counter()
    load_before = load_note()
    throughput_rows, startup = throughput(args.checkpoint, args.dtype, args.scale)
    overhead_rows = overhead(requests_per_client=8 * args.scale)
    notes = [
        f"Machine: {os.cpu_count()} cores shared with other work; 1-min load average "
        f"{load_before} at the start, {load_note()} at the end. {startup}; whole run "
        f"{time.perf_counter() - started:.0f} s.",
        "A full-size second-stage text costs seconds on CPU (520 context positions + the "
        "text), so wall-clock ratios mostly show how much other load hit each half of a "
        "pair; the CPU ratio is the server-side efficiency.",
    ]
    if not args.no_write:
        replace_section(RESULTS, "## Triton", section(throughput_rows, overhead_rows, notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
