"""Settings of the embedded Triton server, read from `CDE_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cde_model.dtypes import Dtype
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cde_server.triton.protocol import DEFAULT_CONTEXT_CACHE_BYTES

_CHECKOUT_MODEL_REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
_PACKAGED_MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
DEFAULT_MODEL_REPOSITORY = (
    _CHECKOUT_MODEL_REPOSITORY
    if _CHECKOUT_MODEL_REPOSITORY.is_dir()
    else _PACKAGED_MODEL_REPOSITORY
)
"""model_repository/ of the source checkout (editable install), else the wheel's copy."""

Device = Literal["auto", "cpu", "gpu"]
MiB = 1024 * 1024


class TritonSettings(BaseSettings):
    """How to start tritonserver: model, ports, repository, instance kind, timeouts."""

    model_config = SettingsConfigDict(env_prefix="CDE_", extra="ignore")

    model: str = Field(default="demo", description='checkpoint directory, or "demo"')
    dtype: Dtype = Field(default="float32", description="float16 on GPU only")
    tokenizer: Path | None = Field(
        default=None,
        description="directory with tokenizer.json for a checkpoint that ships none "
        "(cde-small-v2: answerdotai/ModernBERT-base's files)",
    )
    context_cache_bytes: int = Field(
        default=DEFAULT_CONTEXT_CACHE_BYTES,
        gt=0,
        description="context cache budget of each second-stage instance",
    )
    token_budget: int = Field(
        default=0, ge=0, description="positions per forward pass (0: the model's default)"
    )
    triton_grpc_port: int = Field(default=8001, ge=1, le=65535)
    triton_http_port: int = Field(default=8000, ge=1, le=65535)
    triton_metrics_port: int = Field(default=8002, ge=1, le=65535)
    triton_bind_address: str = Field(default="127.0.0.1", description="Triton listens here")
    triton_host: str = Field(default="127.0.0.1", description="clients reach Triton here")
    triton_model_repository: Path = Field(default=DEFAULT_MODEL_REPOSITORY)
    triton_device: Device = Field(
        default="auto", description="gpu: config.pbtxt, cpu: configs/cpu.pbtxt, auto: detect"
    )
    triton_binary: Path | None = Field(
        default=None, description="tritonserver to run (default: the one in nvidia-pytriton)"
    )
    triton_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "cde-serve" / "triton",
        description="writable directory for the prepared backend directory",
    )
    triton_startup_timeout_s: float = Field(default=600.0, gt=0)
    triton_exit_timeout_s: int = Field(default=30, ge=0, description="grace for in-flight work")
    triton_log_verbose: int = Field(default=0, ge=0)
    triton_shm_default_bytes: int = Field(
        default=4 * MiB, ge=MiB, description="python backend shared memory per stub, initial"
    )
    triton_shm_growth_bytes: int = Field(default=16 * MiB, gt=0)
    triton_allow_http: bool = Field(
        default=True, description="Triton's HTTP endpoint (cde serve's embedded Triton: off)"
    )
    triton_allow_metrics: bool = Field(
        default=True, description="Triton's metrics endpoint (cde serve's embedded Triton: off)"
    )
    triton_secret: SecretStr | None = Field(
        default=None,
        description="required from every Triton client (header cde-triton-secret); "
        "cde serve makes one for its embedded Triton",
    )
    triton_extra_args: list[str] = Field(
        default_factory=list, description="appended to tritonserver's command line (JSON list)"
    )

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """CDE_TOKENIZER="" means no tokenizer directory (not the current one)."""
        return None if value == "" else value

    @property
    def grpc_url(self) -> str:
        """host:port of Triton's gRPC endpoint."""
        return f"{self.triton_host}:{self.triton_grpc_port}"
