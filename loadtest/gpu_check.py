"""The prepared GPU check (`loadtest/gpu_check.sh`): what has never run without a GPU.

On one CUDA device: fp32 parity GPU vs CPU on a full-size random cde-small-v1 checkpoint,
bf16 and fp16 cosine against fp32, in-process second-stage texts/s and model FLOP/s ÷
`torch.matmul` bf16 FLOP/s at batch sizes 1..256 for queries and 200-token documents, and
the full stack (Triton with the KIND_GPU configs + a `cde serve` gateway) at c=64 with the
same ratio. Prints one results block. `--dry-run` runs the same code on CPU with the tiny
checkpoint and small sizes, in seconds, so that CI keeps it from rotting.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cde_model import EmbeddingModel, load_model
from cde_model.random_checkpoint import write_random_checkpoint
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the real check, or the dry run's."""

    device: str
    size: str
    batches: tuple[int, ...]
    query_tokens: int
    document_tokens: int
    concurrency: int
    stack_seconds: float
    triton_device: str


REAL = Plan("cuda", "full", (1, 8, 32, 128, 256), 12, 200, 64, 30.0, "gpu")
DRY = Plan("cpu", "tiny", (1, 4), 12, 40, 4, 2.0, "cpu")


def matmul_flops_per_second(device: str, dtype: torch.dtype, size: int) -> float:
    """Best FLOP/s of one square torch.matmul on `device`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tokens(model: EmbeddingModel, batch: int, length: int, seed: int) -> Any:
    """`batch` texts of `length` tokens (random words), tokenized by the model."""
    rng = np.random.default_rng(seed)
    words = ["model", "context", "document", "query", "vector", "search", "index", "text"]
    texts = [" ".join(rng.choice(words, size=length - 2)) for _ in range(batch)]
    return model.tokenizer.encode(texts)


def context_of(model: EmbeddingModel) -> Any:
    """A prepared context from N random dataset embeddings."""
    rows = torch.randn(
        model.info.corpus_size, model.info.hidden_size, generator=torch.Generator().manual_seed(1)
    )
    return model.prepare_context(rows)


def second_stage(model: EmbeddingModel, ids: Any, mask: Any) -> torch.Tensor:
    with torch.inference_mode():
        return model.second_stage(ids, mask, context_of(model))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Smallest row cosine of `a` and `b`."""
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).min())


def parity(checkpoint: Path, plan: Plan) -> list[str]:
    """fp32 on the device vs on CPU (max-abs), bf16/fp16 cosine vs fp32 on the device."""
    cpu = load_model(str(checkpoint), device="cpu")
    ids, mask = tokens(cpu, 8, plan.document_tokens, seed=2)
    reference = second_stage(cpu, ids, mask)
    lines = []
    fp32 = load_model(str(checkpoint), device=plan.device)
    on_device = second_stage(fp32, ids, mask).cpu()
    lines.append(
        f"fp32 {plan.device} vs cpu: max-abs {float((on_device - reference).abs().max()):.2e}"
    )
    for dtype in ("bfloat16", "float16"):
        if dtype == "float16" and plan.device == "cpu":
            lines.append("fp16: CUDA only (skipped in the dry run)")
            continue
        low = load_model(str(checkpoint), dtype=dtype, device=plan.device)
        similarity = cosine(second_stage(low, ids, mask).cpu(), on_device)
        lines.append(f"{dtype} vs fp32: min cosine {similarity:.6f}")
        del low
    return lines


def throughput(checkpoint: Path, plan: Plan, matmul: float) -> list[str]:
    """In-process second stage: texts/s and FLOP/s ÷ matmul bf16 FLOP/s per batch size."""
    model = load_model(str(checkpoint), dtype="bfloat16", device=plan.device)
    context = context_of(model)
    lines = ["kind      batch  texts/s   ratio"]
    for kind, length in (("query", plan.query_tokens), ("document", plan.document_tokens)):
        for batch in plan.batches:
            ids, mask = tokens(model, batch, length, seed=batch)
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                model.second_stage(ids, mask, context)
            flops = float(counter.get_total_flops())
            run = functools.partial(model.second_stage, ids, mask, context)
            seconds = best_time(run, plan.device)
            ratio = flops / seconds / matmul
            lines.append(f"{kind:9} {batch:5}  {batch / seconds:8.1f}  {ratio:6.3f}")
    return lines


def best_time(run: Callable[[], object], device: str, repeats: int = 5) -> float:
    with torch.inference_mode():
        run()
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best


def full_stack(checkpoint: Path, plan: Plan, matmul: float, work: Path) -> list[str]:
    """Triton (KIND_GPU configs on a GPU) + a `cde serve` gateway; c concurrent clients."""
    from cde_client import AsyncCdeClient
    from cde_server.triton.launcher import TritonProcess, free_ports
    from cde_server.triton.settings import TritonSettings

    grpc_port, http_port, metrics_port, gateway_port = free_ports(4)
    settings = TritonSettings(
        model=str(checkpoint),
        dtype="bfloat16",
        triton_device=plan.triton_device,  # type: ignore[arg-type]
        triton_grpc_port=grpc_port,
        triton_http_port=http_port,
        triton_metrics_port=metrics_port,
        triton_cache_dir=work / "triton-cache",
        triton_exit_timeout_s=5,
    )
    model = load_model(str(checkpoint), device="cpu")
    ids, mask = tokens(model, 1, plan.query_tokens, seed=5)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.second_stage(ids, mask, context_of(model))
    flops_per_text = float(counter.get_total_flops())
    query = " ".join(["search"] * (plan.query_tokens - 6))
    with TritonProcess(settings, log=lambda _line: None) as triton:
        env = {
            **os.environ,
            "CDE_TRITON_URL": triton.grpc_url,
            "CDE_PORT": str(gateway_port),
            "CDE_STORE": f"sqlite:///{work / 'cde.db'}",
            "CDE_METRICS_PORT": "off",
            "CDE_LOG_LEVEL": "WARNING",
        }
        gateway = subprocess.Popen(
            [str(Path(sys.executable).parent / "cde"), "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert gateway.stdout is not None
            for line in gateway.stdout:
                if "gateway ready on" in line:
                    break
            else:
                raise RuntimeError("cde serve exited before it was ready")

            async def load() -> int:
                done = 0
                async with AsyncCdeClient(f"127.0.0.1:{gateway_port}") as client:
                    await client.embed_queries([query])
                    end = time.monotonic() + plan.stack_seconds

                    async def user() -> None:
                        nonlocal done
                        while time.monotonic() < end:
                            await client.embed_queries([query])
                            done += 1

                    await asyncio.gather(*(user() for _ in range(plan.concurrency)))
                return done

            started = time.monotonic()
            texts = asyncio.run(load())
            seconds = time.monotonic() - started
        finally:
            gateway.terminate()
            gateway.wait(30)
    rate = texts / seconds
    return [
        f"c={plan.concurrency}: {rate:.1f} texts/s, one query per request",
        f"model FLOP/s ÷ matmul bf16 FLOP/s: {rate * flops_per_text / matmul:.4f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, seconds")
    args = parser.parse_args(argv)
    plan = DRY if args.dry_run else REAL
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device (use --dry-run on CPU)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cde-gpu-check-") as directory:
        work = Path(directory)
        checkpoint = write_random_checkpoint(work / "checkpoint", plan.size, seed=0)
        matmul = matmul_flops_per_second(plan.device, torch.bfloat16, 256 if args.dry_run else 8192)
        device_name = torch.cuda.get_device_name(0) if plan.device == "cuda" else "cpu"
        block = [
            f"## GPU check ({'dry run, ' if args.dry_run else ''}{device_name}, "
            f"{plan.size} checkpoint, torch {torch.__version__})",
            f"torch.matmul bf16: {matmul / 1e12:.2f} TFLOP/s",
            "",
            "parity:",
            *("  " + line for line in parity(checkpoint, plan)),
            "",
            "in-process second stage (bf16):",
            *("  " + line for line in throughput(checkpoint, plan, matmul)),
            "",
            "full stack (Triton + gateway, bf16):",
            *("  " + line for line in full_stack(checkpoint, plan, matmul, work)),
            "",
            f"took {time.monotonic() - started:.0f} s",
        ]
    print("\n".join(block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
