"""`load_model`: a checkpoint directory or the built-in demo model."""

from __future__ import annotations

from pathlib import Path

from cde_model.description import DEMO_MODEL
from cde_model.family import V2, model_family, read_config
from cde_model.interface import EmbeddingModel


def load_model(
    path_or_demo: str,
    *,
    dtype: str = "float32",
    device: str | None = None,
    token_budget: int | None = None,
) -> EmbeddingModel:
    """Load a checkpoint directory in the published cde-small-v1 or cde-small-v2 layout (the
    family comes from its config.json), or "demo" (MiniLM stand-in).

    dtype: float32 | bfloat16 | float16 (GPU only); device: cpu | cuda | cuda:N, None → cuda
    when available. token_budget: positions per forward pass (None → a per-device default).
    """
    if path_or_demo == DEMO_MODEL:
        from cde_model.demo import DemoModel

        return DemoModel.load(dtype=dtype, device=device, token_budget=token_budget)
    directory = Path(path_or_demo)
    config_path = directory / "config.json"
    if config_path.is_file() and model_family(read_config(config_path)) == V2:
        from cde_model.cde_v2 import CDEV2Model

        return CDEV2Model.load(directory, dtype=dtype, device=device, token_budget=token_budget)
    from cde_model.cde import CDEModel

    return CDEModel.load(directory, dtype=dtype, device=device, token_budget=token_budget)
