"""cde-small-v2 part of the in-process model benchmark (`make bench-model`).

Uses a random checkpoint with the published cde-small-v2 shapes (written to .cache/ if missing;
no embedder_config, so the ModernBERT-base values apply) and measures what bench_model.py
measures for v1: stage 1 and stage 2 texts/s, model FLOP/s ÷ torch.matmul FLOP/s (float32, the
model's own GEMM shapes), the same at one thread by CPU time, and bfloat16 against float32.

FLOPs (one multiply-add = 2 FLOPs; H=768, I=1152, 22 layers, 8 global, N=512 + 8 prompt rows):
- dense work per row and layer: D = 2·(4H² + 3HI)   (Wqkv + Wo + GLU MLP Wi, Wo)
- attention per layer: 4·H per (query, key) pair scored
- "useful" (the bold ratio) counts the work this implementation must do, nothing it wastes:
  in the 14 local layers only the (query, key) pairs inside the 129-row window (its banded
  kernel scores a little more: whole blocks of keys, masked), in the global layers every pair;
  in stage 2 the last layer (global) computes queries, attention output and MLP for the L text
  rows only: S·4H² + L·(D - 4H²) + 4·L·S·H.
- "published" counts the published implementation's work (SDPA with a mask scores every key in
  every layer, and every row leaves the last layer): 22·(S·D + 4·S²·H); the ratio of the two
  is the gain from the exact shortcuts.
- stage 1, L tokens: backbone over S = L rows, plus the MLP head 4H²
- stage 2, L tokens: backbone over S = N+8+L rows, plus the output projection 4H²
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import torch
from bench_model import (
    REPO,
    Clock,
    Row,
    best_seconds,
    machine_description,
    matmul_flops_per_second,
    precision_row,
    random_tokens,
    table,
    with_reference,
    write_section,
)
from cde_model import EmbeddingModel, load_model
from cde_model.random_checkpoint_v2 import V2_SHAPES, write_random_v2_checkpoint

DEFAULT_V2_CHECKPOINT = REPO / ".cache" / "cde-v2-full"
V2_SECTION = "## cde-small-v2 model (in-process)"

SHAPE = V2_SHAPES["full"]
H, INNER, LAYERS = SHAPE.hidden, SHAPE.inner, SHAPE.layers
GLOBAL_LAYERS = len(range(0, LAYERS, 3))
HALF_WINDOW = SHAPE.local_attention // 2
FIXED_ROWS = SHAPE.corpus_size + 8
DENSE = 2 * (4 * H * H + 3 * H * INNER)
QUERY_TOKENS, DOCUMENT_TOKENS, STAGE1_TOKENS = 12, 200, 128


def window_pairs(rows: int) -> int:
    """(query, key) pairs within HALF_WINDOW positions of each other among `rows` rows."""
    return sum(min(rows - 1, i + HALF_WINDOW) - max(0, i - HALF_WINDOW) + 1 for i in range(rows))


def backbone_flops(rows: int, text_rows: int = 0, published: bool = False) -> float:
    """22 layers over `rows` rows. Not published: in-window pairs only in the local layers,
    and with `text_rows`, the last layer's outputs for the text rows alone."""
    local_pairs = rows * rows if published else window_pairs(rows)
    attention = 4 * H * (GLOBAL_LAYERS * rows * rows + (LAYERS - GLOBAL_LAYERS) * local_pairs)
    dense = LAYERS * rows * DENSE
    if text_rows and not published:
        skipped = rows - text_rows  # the last layer is global: their queries, Wo and MLP
        dense -= skipped * (DENSE - 4 * H * H)
        attention -= 4 * H * skipped * rows
    return dense + attention


def stage1_flops(tokens: int, published: bool = False) -> float:
    return backbone_flops(tokens, published=published) + 4 * H * H


def stage2_flops(tokens: int, published: bool = False) -> float:
    return backbone_flops(FIXED_ROWS + tokens, tokens, published) + 4 * H * H


def v2_matmul(clock: Clock = time.perf_counter) -> float:
    return matmul_flops_per_second(clock=clock, mlp_inner=INNER)


def bench_stage1(model: EmbeddingModel, batch: int, repeats: int, clock: Clock) -> Row:
    ids, mask = random_tokens(batch, STAGE1_TOKENS, seed=1)
    model.first_stage(ids[:2], mask[:2])
    seconds = best_seconds(lambda: model.first_stage(ids, mask), repeats, clock)
    return Row(
        "stage 1 (documents)",
        batch,
        STAGE1_TOKENS,
        seconds,
        batch * stage1_flops(STAGE1_TOKENS),
        batch * stage1_flops(STAGE1_TOKENS, published=True),
    )


def bench_stage2(
    model: EmbeddingModel, what: str, tokens: int, batch: int, repeats: int, clock: Clock
) -> Row:
    context = model.prepare_context(torch.randn(SHAPE.corpus_size, H))
    ids, mask = random_tokens(batch, tokens, seed=2)
    model.second_stage(ids[:1], mask[:1], context)
    seconds = best_seconds(lambda: model.second_stage(ids, mask, context), repeats, clock)
    return Row(
        what,
        batch,
        tokens,
        seconds,
        batch * stage2_flops(tokens),
        batch * stage2_flops(tokens, published=True),
    )


def throughput_rows(
    model: EmbeddingModel,
    stage1_batches: tuple[int, ...],
    query_batches: tuple[int, ...],
    document_batches: tuple[int, ...],
    repeats: int = 2,
    clock: Clock = time.perf_counter,
) -> list[Row]:
    rows = [
        with_reference(
            functools.partial(bench_stage1, model, batch, repeats, clock), clock, v2_matmul
        )
        for batch in stage1_batches
    ]
    for what, tokens, batches in (
        ("stage 2 query", QUERY_TOKENS, query_batches),
        ("stage 2 document", DOCUMENT_TOKENS, document_batches),
    ):
        rows += [
            with_reference(
                functools.partial(bench_stage2, model, what, tokens, batch, repeats, clock),
                clock,
                v2_matmul,
            )
            for batch in batches
        ]
    return rows


def bf16_comparison(fp32: EmbeddingModel, checkpoint: Path) -> list[list[str]]:
    """Speed and cosine of bfloat16 against float32 on the same inputs."""
    bf16 = load_model(str(checkpoint), dtype="bfloat16", device="cpu")
    dataset = torch.randn(SHAPE.corpus_size, H, generator=torch.Generator().manual_seed(3))
    rows = []
    for what, batch, tokens, stage2 in (
        ("stage 1", 16, STAGE1_TOKENS, False),
        ("stage 2 query", 8, QUERY_TOKENS, True),
        ("stage 2 document", 4, DOCUMENT_TOKENS, True),
    ):
        ids, mask = random_tokens(batch, tokens, seed=4)
        runs = []
        for model in (fp32, bf16):
            if stage2:
                context = model.prepare_context(dataset)
                runs.append(functools.partial(model.second_stage, ids, mask, context))
            else:
                runs.append(functools.partial(model.first_stage, ids, mask))
        rows.append(precision_row(what, batch, tokens, runs))
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def run_v2(checkpoint: Path, quick: bool) -> str:
    """Measure everything; returns the RESULTS.md section (written unless `quick`)."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    if not (checkpoint / "model.safetensors").exists():
        print(f"writing a random full-size v2 checkpoint to {checkpoint}", file=sys.stderr)
        write_random_v2_checkpoint(checkpoint, "full", seed=0)
    model = load_model(str(checkpoint), device="cpu")
    threads = torch.get_num_threads()
    if quick:
        rows = throughput_rows(model, (2,), (1,), (1,), repeats=1)
    else:
        rows = throughput_rows(model, (8, 32), (1, 4, 16), (1, 4))
    torch.set_num_threads(1)
    single = throughput_rows(model, (4,), (2,), (2,), repeats=2 - quick, clock=time.process_time)
    torch.set_num_threads(threads)
    bf16_rows = [] if quick else bf16_comparison(model, checkpoint)
    load_after = os.getloadavg()[0]
    elapsed = time.perf_counter() - started
    header = ["what", "batch", "tokens/text", "texts/s", "tokens/s", "GFLOP/s", "matmul GFLOP/s",
              "÷ matmul (useful FLOPs)", "÷ matmul (published FLOPs)"]  # fmt: skip
    bf16_header = ["what", "batch", "tokens/text", "fp32 texts/s", "bf16 texts/s", "speed-up",
                   "cosine", "cosine, batch mean removed"]  # fmt: skip
    text = f"""{V2_SECTION}

`python loadtest/bench_model.py` (`make bench-model`; this part: `loadtest/bench_model_v2.py`),
{time.strftime("%Y-%m-%d")}, CPU float32, random checkpoint with the published cde-small-v2
shapes (ModernBERT-base: H 768, 22 layers of which 8 global, I 1152, N = 512; no
embedder_config), with transformers' `ModernBertModel` weights and our own forward pass
(`cde_model/modernbert_forward.py`: banded local attention, the last layer for the text rows
only). Machine:
{machine_description()}. Load average (1 min) {load_before:.1f} before and {load_after:.1f}
after the run (above the core count means other work shared the CPU); run time
{elapsed:.0f} s.

Reference ("matmul GFLOP/s"): `torch.matmul` float32, best over v2's GEMM shapes with 2048 rows,
measured right before and after each row. "÷ matmul (useful FLOPs)" counts the work this
implementation must do and nothing it wastes (local layers: only the keys inside the 129-row
window, though the banded kernel scores whole masked blocks; stage 2's last layer: the text
rows' outputs only); "published FLOPs" counts the published implementation's work (every key in
every layer, every row through the last layer), so it is the effective speed. Formulas: module
docstring of `loadtest/bench_model_v2.py`. Stage 2 texts carry N+8 = {FIXED_ROWS} context and
prompt rows.

{table(header, [row.cells() for row in rows])}

Single thread, timed by CPU time (`time.process_time`), so other work on the machine does not
count; "texts/s" here are per busy core:

{table(header, [row.cells() for row in single])}

bfloat16 against float32 (same inputs; cosine mean / min, also after removing the float32
batch mean, since random weights give all inputs a large shared component):

{table(bf16_header, bf16_rows)}
"""
    if not quick:
        write_section(text, V2_SECTION)
    return text
