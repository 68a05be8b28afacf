"""Choosing the device, dtype and forward-pass size a model runs with."""

from __future__ import annotations

import torch

from cde_model.dtypes import DTYPES

TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES}

# Positions per forward pass. On CPU larger passes gain nothing once the matmuls are big
# enough to run at full speed and cost memory; a GPU wants more work per launch.
CPU_TOKEN_BUDGET = 4096
GPU_TOKEN_BUDGET = 65536


def resolve_device(device: str | None) -> torch.device:
    """`None` → cuda when available, else cpu; an unusable device raises ValueError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist")
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 | bfloat16 | float16 (GPU only) → torch dtype."""
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r} (use {', '.join(DTYPES)})")
    if dtype == "float16" and device.type != "cuda":
        raise ValueError("float16 needs a CUDA device; use float32 or bfloat16 on CPU")
    return TORCH_DTYPES[dtype]


def default_token_budget(device: torch.device) -> int:
    """Positions per forward pass for `device`."""
    return GPU_TOKEN_BUDGET if device.type == "cuda" else CPU_TOKEN_BUDGET
