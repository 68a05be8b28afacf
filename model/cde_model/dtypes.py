"""The weight dtypes the model package runs, named once (torch-free, so settings can use it)."""

from __future__ import annotations

from typing import Literal, get_args

Dtype = Literal["float32", "bfloat16", "float16"]
"""float16 runs on CUDA only."""
DTYPES: tuple[Dtype, ...] = get_args(Dtype)
