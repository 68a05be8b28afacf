"""The prepared GPU check runs its whole code path on CPU (`--dry-run`), so it cannot rot."""

from __future__ import annotations

import subprocess

from support.paths import REPO_ROOT


def test_gpu_check_dry_run_prints_its_results_block() -> None:
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "loadtest" / "gpu_check.sh"), "--dry-run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    block = result.stdout
    for part in ("## GPU check (dry run", "parity:", "bfloat16 vs fp32: min cosine",
                 "in-process second stage", "full stack", "matmul bf16 FLOP/s"):  # fmt: skip
        assert part in block, block
