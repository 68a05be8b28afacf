"""In-process model benchmark (`make bench-model`): CPU throughput and FLOP efficiency.

Uses a random checkpoint with the real cde-small-v1 shapes (written to .cache/ if missing) and
measures, in one run:
- torch.matmul FLOP/s on the model's own GEMM shapes (the reference, best of several tries);
- stage 1 tokens/s and stage 2 texts/s (short queries, 200-token documents, several batch
  sizes), each as FLOP/s and as a ratio to the matmul reference;
- the same ratio at one thread timed by CPU time, which other work on a shared machine does
  not disturb;
- bfloat16 against float32: speed and cosine similarity of the outputs.
Results replace the "## Model (in-process)" section of loadtest/RESULTS.md.

FLOPs (one multiply-add = 2 FLOPs; H=768, I=3072, 12 layers, N=512 context rows + 8 prompt):
- dense work per row and layer: D = 2·(4H² + 3HI)   (q/k/v + out_proj + SwiGLU MLP)
- attention per layer: 4·Sq·Sk·H for Sq query rows attending over Sk key rows
- stage 1, L tokens: 12·(L·D + 4·L²·H)
- stage 2, L tokens, S = N+8+L rows. "executed" counts what this implementation computes:
  layer 0 skips q/k/v of the N+8 context rows (precomputed per context), the last layer
  computes queries, attention output and MLP for the L text rows only:
    11·(S·D + 4·S²·H) - (N+8)·6H² + [S·4H² + L·(D - 4H²) + 4·L·S·H]
  "published" counts the published implementation's work, 12·(S·D + 4·S²·H); the ratio of
  the two is the gain from the exact shortcuts.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cde_model import EmbeddingModel, load_model
from cde_model.random_checkpoint import SHAPES, write_random_checkpoint
from results import replace_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / ".cache" / "cde-full"  # shared with the other benchmarks
RESULTS = REPO / "loadtest" / "RESULTS.md"
SECTION = "## Model (in-process)"

SHAPE = SHAPES["full"]
H, INNER, LAYERS = SHAPE.hidden, SHAPE.inner, SHAPE.layers
FIXED_ROWS = SHAPE.corpus_size + 8
DENSE = 2 * (4 * H * H + 3 * H * INNER)
QUERY_TOKENS, DOCUMENT_TOKENS, STAGE1_TOKENS = 12, 200, 128


def stage1_flops(tokens: int) -> float:
    return LAYERS * (tokens * DENSE + 4 * tokens * tokens * H) + 4 * H * H


def stage2_flops(tokens: int, published: bool = False) -> float:
    rows = FIXED_ROWS + tokens
    per_layer = rows * DENSE + 4 * rows * rows * H
    if published:
        return LAYERS * per_layer
    last = rows * 4 * H * H + tokens * (DENSE - 4 * H * H) + 4 * tokens * rows * H
    return (LAYERS - 1) * per_layer - FIXED_ROWS * 6 * H * H + last


Clock = Callable[[], float]  # time.perf_counter (wall) or time.process_time (CPU time)


def best_seconds(
    run: Callable[[], object], repeats: int, clock: Clock = time.perf_counter
) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        run()
        times.append(clock() - start)
    return min(times)


def matmul_flops_per_second(
    dtype: torch.dtype = torch.float32, clock: Clock = time.perf_counter, mlp_inner: int = INNER
) -> float:
    """Best FLOP/s of torch.matmul over the model's GEMM shapes, 2048 rows each.

    mlp_inner: the MLP intermediate size (v1's by default; cde-small-v2 has 1152).
    """
    rates = []
    for inner, outer in ((H, 3 * H), (H, 2 * mlp_inner), (mlp_inner, H), (H, H)):
        a = torch.randn(2048, inner, dtype=dtype)
        b = torch.randn(inner, outer, dtype=dtype)
        torch.matmul(a, b)
        seconds = best_seconds(functools.partial(torch.matmul, a, b), 5, clock)
        rates.append(2 * 2048 * inner * outer / seconds)
    return max(rates)


def random_tokens(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] random word pieces [SEP], all rows `length` long (no padding)."""
    ids = torch.from_numpy(np.random.default_rng(seed).integers(1000, 30000, (batch, length)))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, torch.ones(batch, length, dtype=torch.int64)


@dataclass
class Row:
    what: str
    batch: int
    tokens: int
    seconds: float
    flops: float  # executed
    published_flops: float
    matmul: float = 0.0  # reference FLOP/s measured right before and after this row

    def cells(self) -> list[str]:
        rate = self.flops / self.seconds
        return [
            self.what,
            str(self.batch),
            str(self.tokens),
            f"{self.batch / self.seconds:,.2f}",
            f"{self.batch * self.tokens / self.seconds:,.0f}",
            f"{rate / 1e9:,.1f}",
            f"{self.matmul / 1e9:,.1f}",
            f"**{rate / self.matmul:.2f}**",
            f"{self.published_flops / self.seconds / self.matmul:.2f}",
        ]


def with_reference(
    measure: Callable[[], Row],
    clock: Clock,
    matmul: Callable[[Clock], float] = lambda clock: matmul_flops_per_second(clock=clock),
) -> Row:
    """Run `measure` between two `matmul` measurements; the row keeps the better reference.

    Measuring the reference next to each row keeps the ratio fair when other work on the
    machine comes and goes during the run.
    """
    before = matmul(clock)
    row = measure()
    row.matmul = max(before, matmul(clock))
    print(" | ".join(row.cells()), file=sys.stderr, flush=True)
    return row


def bench_stage1(model: EmbeddingModel, batch: int, repeats: int, clock: Clock) -> Row:
    ids, mask = random_tokens(batch, STAGE1_TOKENS, seed=1)
    model.first_stage(ids[:2], mask[:2])
    seconds = best_seconds(lambda: model.first_stage(ids, mask), repeats, clock)
    flops = batch * stage1_flops(STAGE1_TOKENS)
    return Row("stage 1 (documents)", batch, STAGE1_TOKENS, seconds, flops, flops)


def bench_stage2(
    model: EmbeddingModel, what: str, tokens: int, batch: int, repeats: int, clock: Clock
) -> Row:
    context = model.prepare_context(torch.randn(SHAPE.corpus_size, H))
    ids, mask = random_tokens(batch, tokens, seed=2)
    seconds = best_seconds(lambda: model.second_stage(ids, mask, context), repeats, clock)
    return Row(
        what,
        batch,
        tokens,
        seconds,
        batch * stage2_flops(tokens),
        batch * stage2_flops(tokens, published=True),
    )


def runner(
    model: EmbeddingModel, ids: torch.Tensor, mask: torch.Tensor, dataset: torch.Tensor | None
) -> Callable[[], torch.Tensor]:
    """Stage 1 on the tokens, or stage 2 conditioned on `dataset`."""
    if dataset is None:
        return lambda: model.first_stage(ids, mask)
    context = model.prepare_context(dataset)
    return lambda: model.second_stage(ids, mask, context)


def bf16_comparison(fp32: EmbeddingModel, checkpoint: Path) -> list[list[str]]:
    """Speed and cosine of bfloat16 against float32 on the same inputs."""
    bf16 = load_model(str(checkpoint), dtype="bfloat16", device="cpu")
    rows = []
    generator = torch.Generator().manual_seed(3)
    dataset = torch.randn(SHAPE.corpus_size, H, generator=generator)
    cases = (
        ("stage 1", 16, STAGE1_TOKENS, None),
        ("stage 2 query", 8, QUERY_TOKENS, dataset),
        ("stage 2 document", 4, DOCUMENT_TOKENS, dataset),
    )
    for what, batch, tokens, context_rows in cases:
        ids, mask = random_tokens(batch, tokens, seed=4)
        runs = [runner(model, ids, mask, context_rows) for model in (fp32, bf16)]
        rows.append(precision_row(what, batch, tokens, runs))
    return rows


def precision_row(
    what: str, batch: int, tokens: int, runs: Sequence[Callable[[], torch.Tensor]]
) -> list[str]:
    """Speeds of the float32 and bfloat16 runs and the cosine of their outputs, as a row."""
    outputs, speeds = [], []
    for run in runs:
        outputs.append(run())
        speeds.append(best_seconds(run, 2))
    cosine = F.cosine_similarity(outputs[0], outputs[1], dim=-1)
    # Random weights give every input a large shared component; without it the
    # comparison shows the error relative to what distinguishes the inputs.
    shared = outputs[0].mean(dim=0)
    centered = F.cosine_similarity(outputs[0] - shared, outputs[1] - shared, dim=-1)
    return [
        what,
        str(batch),
        str(tokens),
        f"{batch / speeds[0]:,.1f}",
        f"{batch / speeds[1]:,.1f}",
        f"{speeds[0] / speeds[1]:.2f}x",
        f"{cosine.mean():.5f} / {cosine.min():.5f}",
        f"{centered.mean():.4f} / {centered.min():.4f}",
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        if match:
            cpu = match.group(1).strip()
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def write_section(text: str, section: str = SECTION) -> None:
    """Replace (or append) one benchmark section of RESULTS.md; other sections stay."""
    replace_section(RESULTS, section, text)


def throughput_rows(
    model: EmbeddingModel,
    stage1_batches: tuple[int, ...],
    stage2_batches: tuple[int, ...],
    repeats: int = 2,
    clock: Clock = time.perf_counter,
) -> list[Row]:
    """Stage 1 documents, stage 2 queries and documents at the given batch sizes."""
    rows = [
        with_reference(functools.partial(bench_stage1, model, batch, repeats, clock), clock)
        for batch in stage1_batches
    ]
    for what, tokens in (("stage 2 query", QUERY_TOKENS), ("stage 2 document", DOCUMENT_TOKENS)):
        rows += [
            with_reference(
                functools.partial(bench_stage2, model, what, tokens, batch, repeats, clock), clock
            )
            for batch in stage2_batches
        ]
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: tiny batches, RESULTS.md untouched"
    )
    parser.add_argument(
        "--family", choices=("v1", "v2", "both"), default="both", help="which model(s) to measure"
    )
    parser.add_argument("--v2-checkpoint", type=Path, default=None)
    args = parser.parse_args(argv)
    quick: bool = args.quick
    checkpoint: Path = args.checkpoint
    if args.family in ("v2", "both"):
        from bench_model_v2 import DEFAULT_V2_CHECKPOINT, run_v2

        print(run_v2(args.v2_checkpoint or DEFAULT_V2_CHECKPOINT, quick))
    if args.family == "v2":
        return 0
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    if not (checkpoint / "model.safetensors").exists():
        print(f"writing a random full-size checkpoint to {checkpoint}", file=sys.stderr)
        write_random_checkpoint(checkpoint, "full", seed=0)
    model = load_model(str(checkpoint), device="cpu")
    threads = torch.get_num_threads()
    stage1_batches, stage2_batches = ((2,), (1,)) if quick else ((8, 32), (1, 4, 16))
    rows = throughput_rows(model, stage1_batches, stage2_batches)
    # One thread timed by CPU time: the efficiency of the code itself, undisturbed by other work
    # on a shared machine (which stalls multi-threaded small ops far more than one big matmul).
    torch.set_num_threads(1)
    single_thread_rows = throughput_rows(model, (4,), (2,), repeats=2, clock=time.process_time)
    torch.set_num_threads(threads)
    bf16_rows = [] if quick else bf16_comparison(model, checkpoint)
    matmul_bf16 = matmul_flops_per_second(torch.bfloat16)
    load_after = os.getloadavg()[0]
    elapsed = time.perf_counter() - started

    header = ["what", "batch", "tokens/text", "texts/s", "tokens/s", "GFLOP/s", "matmul GFLOP/s",
              "÷ matmul (executed)", "÷ matmul (published FLOPs)"]  # fmt: skip
    bf16_header = ["what", "batch", "tokens/text", "fp32 texts/s", "bf16 texts/s", "speed-up",
                   "cosine", "cosine, batch mean removed"]  # fmt: skip
    text = f"""{SECTION}

`python loadtest/bench_model.py` (`make bench-model`), {time.strftime("%Y-%m-%d")}, CPU float32,
random checkpoint with the real cde-small-v1 shapes. Machine: {machine_description()}.
Load average (1 min) {load_before:.1f} before and {load_after:.1f} after the run
(above the core count means other work shared the CPU and the numbers are pessimistic);
run time {elapsed:.0f} s.

Reference ("matmul GFLOP/s"): `torch.matmul` float32, best over the model's GEMM shapes with
2048 rows, measured right before and after each row; bfloat16 matmul
{matmul_bf16 / 1e9:,.1f} GFLOP/s. "÷ matmul (executed)" counts the FLOPs this implementation
performs; "published FLOPs" counts the published implementation's (it recomputes what we
precompute or skip), so it is the effective speed. Formulas: module docstring of
`loadtest/bench_model.py`.
Stage 2 texts carry N+8 = {FIXED_ROWS} context and prompt rows each.

{table(header, [row.cells() for row in rows])}

Single thread, timed by CPU time (`time.process_time`, model and matmul alike), so other work
on the machine does not count; "texts/s" here are per busy core:

{table(header, [row.cells() for row in single_thread_rows])}

bfloat16 against float32 (same inputs; cosine mean / min, also after removing the float32
batch mean, since random weights give all inputs a large shared component):

{table(bf16_header, bf16_rows)}
"""
    if not quick:
        write_section(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
