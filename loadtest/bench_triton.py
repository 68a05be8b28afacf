"""Texts/s through Triton (gRPC) vs the in-process model on the same batches.

A full-size random checkpoint (created if missing) is served by the embedded Triton. At each
concurrency c, c closed-loop clients send one query per request through the `cde_embed`
ensemble; the in-process model then embeds the same texts in batches of c (tokenize +
second stage). Also compared at one concurrency: the ensemble vs direct calls (cde_tokenize,
then cde_second_stage). Results replace the "## Triton" section of loadtest/RESULTS.md.

    .venv/bin/python loadtest/bench_triton.py [--checkpoint .cache/cde-full] [--scale 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cde_server import triton_protocol as tp

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtest" / "RESULTS.md"
WORDS = (
    "search", "index", "query", "vector", "model", "context", "document", "embedding",
    "server", "batch", "cache", "token", "latency", "throughput", "gradient", "corpus",
    "retrieval", "ranking", "cosine", "triton", "python",
)  # fmt: skip

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Level:
    concurrency: int
    texts: int


@dataclass(frozen=True)
class Row:
    path: str
    concurrency: int
    texts: int
    triton_tps: float
    inprocess_tps: float
    mean_batch: float

    @property
    def ratio(self) -> float:
        return self.triton_tps / self.inprocess_tps


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
        self.client.is_server_live()  # connect now, not inside the measurement
        self.context = context

    def ensemble(self, text: str) -> Array:
        inputs = infer_inputs(
            [
                (tp.TEXT, tp.text_tensor([text]), "BYTES"),
                (tp.CONTEXT_ID, tp.context_id_tensor(self.context, 1), "BYTES"),
            ]
        )
        return np.asarray(self.client.infer(tp.EMBED_ENSEMBLE, inputs).as_numpy(tp.EMBEDDING))

    def direct(self, text: str) -> Array:
        tokens = self.client.infer(
            tp.TOKENIZE_MODEL, infer_inputs([(tp.TEXT, tp.text_tensor([text]), "BYTES")])
        )
        inputs = infer_inputs(
            [
                (tp.INPUT_IDS, tokens.as_numpy(tp.INPUT_IDS), "INT64"),
                (tp.ATTENTION_MASK, tokens.as_numpy(tp.ATTENTION_MASK), "INT64"),
                (tp.CONTEXT_ID, tp.context_id_tensor(self.context, 1), "BYTES"),
            ]
        )
        return np.asarray(self.client.infer(tp.SECOND_STAGE_MODEL, inputs).as_numpy(tp.EMBEDDING))

    def close(self) -> None:
        self.client.close()


def run_clients(
    url: str, context: str, texts: Sequence[str], concurrency: int, path: str
) -> tuple[float, dict[int, Array]]:
    """Closed loop: `concurrency` threads drain `texts`; (seconds, results by index)."""
    work: queue.Queue[int] = queue.Queue()
    for index in range(len(texts)):
        work.put(index)
    results: dict[int, Array] = {}
    errors: list[BaseException] = []
    clients = [Client(url, context) for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(client: Client) -> None:
        call: Callable[[str], Array] = client.ensemble if path == "ensemble" else client.direct
        barrier.wait()
        while True:
            try:
                index = work.get_nowait()
            except queue.Empty:
                return
            try:
                results[index] = call(texts[index])
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
    return elapsed, results


def second_stage_counts(url: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(tp.SECOND_STAGE_MODEL, as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def in_process(model: Any, context: Any, texts: Sequence[str], batch: int) -> tuple[float, Array]:
    """Seconds to tokenize + embed `texts` in batches of `batch`, and the embeddings."""
    import torch

    outputs = []
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            ids, mask = model.tokenizer.encode(texts[start : start + batch])
            outputs.append(model.second_stage(ids, mask, context).numpy())
    return time.perf_counter() - started, np.concatenate(outputs)


def measure(
    url: str,
    context: str,
    level: Level,
    path: str,
    texts: Sequence[str],
    local: tuple[float, Array],
) -> Row:
    """Triton at `level` on `texts`, compared with their in-process (seconds, embeddings)."""
    inferences0, executions0 = second_stage_counts(url)
    triton_s, by_index = run_clients(url, context, texts, level.concurrency, path)
    inferences1, executions1 = second_stage_counts(url)
    local_s, expected = local
    served = np.concatenate([by_index[i] for i in range(len(texts))])
    difference = float(np.abs(served - expected).max())
    if difference > 1e-3:
        raise AssertionError(f"Triton and in-process results differ by {difference}")
    executions = max(executions1 - executions0, 1)
    row = Row(
        path,
        level.concurrency,
        level.texts,
        level.texts / triton_s,
        level.texts / local_s,
        (inferences1 - inferences0) / executions,
    )
    print(
        f"{path:8s} c={row.concurrency:<3d} texts={row.texts:<4d} triton {row.triton_tps:7.3f}/s "
        f"in-process {row.inprocess_tps:7.3f}/s ratio {row.ratio:5.3f} "
        f"mean batch {row.mean_batch:5.1f} (max diff {difference:.1e})",
        flush=True,
    )
    return row


def machine_note() -> str:
    load1, _, _ = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = " (busy: other work was running)" if load1 > cores * 0.75 else ""
    return f"{cores} cores, 1-min load average {load1:.1f} at the start{busy}"


def write_results(rows: Sequence[Row], header: str, note: str) -> None:
    """Replace (or append) the '## Triton' section of RESULTS.md."""
    lines = [
        "## Triton",
        "",
        header,
        "",
        "| path | concurrency | texts | Triton texts/s | in-process texts/s | ratio | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.path} | {r.concurrency} | {r.texts} | {r.triton_tps:.3f} | "
            f"{r.inprocess_tps:.3f} | {r.ratio:.3f} | {r.mean_batch:.1f} |"
        )
    lines += ["", note, ""]
    section = "\n".join(lines)
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Triton\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / ".cache" / "cde-full")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--scale", type=int, default=1, help="multiply the texts per level")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cde_model import load_model
    from cde_model.random_checkpoint import write_random_checkpoint
    from cde_server.launcher import TritonProcess, free_ports
    from cde_server.triton_settings import TritonSettings

    if not (args.checkpoint / "config.json").is_file():
        print(f"writing a full-size random checkpoint to {args.checkpoint}", flush=True)
        write_random_checkpoint(args.checkpoint, size="full", seed=0)
    levels = [Level(1, 2 * args.scale), Level(8, 8 * args.scale), Level(32, 32 * args.scale)]

    note_start = machine_note()
    started = time.perf_counter()
    model = load_model(str(args.checkpoint), dtype=args.dtype, device="cpu")
    rng = np.random.default_rng(0)
    dataset = rng.standard_normal((model.info.corpus_size, model.info.hidden_size))
    dataset = dataset.astype(np.float32)
    context = tp.context_id(dataset)
    prepared = model.prepare_context(dataset)

    grpc_port, http_port, metrics_port = free_ports(3)
    settings = TritonSettings(
        model=str(args.checkpoint),
        dtype=args.dtype,
        triton_grpc_port=grpc_port,
        triton_http_port=http_port,
        triton_metrics_port=metrics_port,
        triton_exit_timeout_s=5,
    )
    rows: list[Row] = []
    with TritonProcess(settings) as triton:
        url = triton.grpc_url
        load_s = time.perf_counter() - started
        warm = Client(url, context)  # fill the context cache and warm both paths
        inputs = infer_inputs(
            [
                (tp.TEXT, tp.text_tensor(make_texts(1, 99)), "BYTES"),
                (tp.CONTEXT_ID, tp.context_id_tensor(context, 1), "BYTES"),
                (tp.DATASET_EMBEDDINGS, dataset[None], "FP32"),
            ]
        )
        warm.client.infer(tp.EMBED_ENSEMBLE, inputs)
        warm.direct(make_texts(1, 98)[0])
        warm.close()
        in_process(model, prepared, make_texts(1, 97), 1)
        for seed, level in enumerate(levels):
            texts = make_texts(level.texts, seed)
            local = in_process(model, prepared, texts, level.concurrency)
            rows.append(measure(url, context, level, "ensemble", texts, local))
            if level.concurrency == 8:
                rows.append(measure(url, context, level, "direct", texts, local))
    total_s = time.perf_counter() - started
    header = (
        f"`loadtest/bench_triton.py` on {datetime.now(UTC):%Y-%m-%d}: full-size random "
        f"checkpoint ({model.info.hidden_size} hidden, N={model.info.corpus_size}), "
        f"{args.dtype}, CPU configs, one query (6-14 words) per gRPC request, closed loop. "
        "In-process: the same texts, tokenize + second stage in batches of c. "
        "Mean batch: second-stage inferences per execution."
    )
    note = (
        f"Machine: {note_start}; {machine_note().split(',')[1].strip()} at the end. "
        f"Start-up {load_s:.0f} s, whole run {total_s:.0f} s. On CPU a full-size second-stage "
        "text costs seconds (520 context positions + text), so Triton's per-request overhead "
        "(ms) is small next to it; the ensemble-vs-direct row is the same c as above."
    )
    if not args.no_write:
        write_results(rows, header, note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
