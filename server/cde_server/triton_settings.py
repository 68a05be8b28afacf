"""Settings of the embedded Triton server, read from `CDE_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SOURCE_MODEL_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
"""model_repository/ of a source checkout (editable install)."""

Device = Literal["auto", "cpu", "gpu"]
Dtype = Literal["float32", "bfloat16", "float16"]


class TritonSettings(BaseSettings):
    """How to start tritonserver: model, ports, repository, instance kind, timeouts."""

    model_config = SettingsConfigDict(env_prefix="CDE_", extra="ignore")

    model: str = Field("demo", description='CDE checkpoint directory, or "demo"')
    dtype: Dtype = Field("float32", description="weights/compute dtype (float16: GPU only)")
    context_cache_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="context cache budget per second-stage instance"
    )
    triton_grpc_port: int = Field(8001, ge=1, le=65535)
    triton_http_port: int = Field(8000, ge=1, le=65535)
    triton_metrics_port: int = Field(8002, ge=1, le=65535)
    triton_host: str = Field("localhost", description="host the clients use to reach Triton")
    triton_model_repository: Path = SOURCE_MODEL_REPOSITORY
    triton_device: Device = Field("auto", description="gpu: config.pbtxt; cpu: configs/cpu.pbtxt")
    triton_binary: Path | None = Field(None, description="tritonserver; default: nvidia-pytriton's")
    triton_cache_dir: Path = Field(
        Path.home() / ".cache" / "cde-serve" / "triton",
        description="writable directory for the prepared backend directory",
    )
    triton_startup_timeout_s: float = Field(600.0, gt=0)
    triton_exit_timeout_s: int = Field(30, ge=0, description="grace for in-flight requests")
    triton_log_verbose: int = Field(0, ge=0)
    triton_shm_default_bytes: int = Field(
        4 * 1024 * 1024, ge=1024 * 1024, description="python backend shm per stub, initial"
    )
    triton_shm_growth_bytes: int = Field(16 * 1024 * 1024, gt=0)
    triton_extra_args: list[str] = Field(
        default_factory=list, description="appended to the tritonserver command line"
    )

    @property
    def grpc_url(self) -> str:
        """host:port of Triton's gRPC endpoint."""
        return f"{self.triton_host}:{self.triton_grpc_port}"
