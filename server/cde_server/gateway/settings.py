"""Settings of the gRPC gateway, read from `CDE_*` environment variables (pydantic-settings).

The embedded Triton server has its own settings (`cde_server.triton.settings.TritonSettings`,
same prefix); `cde serve` hands `model` and `dtype` from here to it so both agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cde_model.dtypes import Dtype
from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
EmbedPath = Literal["ensemble", "direct"]
GatewayTokenizer = Literal["auto", "off"]


def default_state_dir() -> Path:
    """Directory of the default SQLite store: $XDG_DATA_HOME/cde-serve (~/.local/share/...)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cde-serve"


def default_store_url() -> str:
    """sqlite:///<state dir>/cde.db (the state dir is absolute)."""
    return f"sqlite://{default_state_dir().absolute() / 'cde.db'}"


class GatewaySettings(BaseSettings):
    """Everything the gateway process needs: addresses, store, Triton, limits, logging."""

    model_config = SettingsConfigDict(env_prefix="CDE_", extra="ignore")

    model: str = Field(
        default="demo", description='checkpoint directory for the embedded Triton, or "demo"'
    )
    dtype: Dtype = Field(default="float32", description="weights dtype for the embedded Triton")
    host: str = Field(default="127.0.0.1", description="address the gateway listens on")
    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    http_port: int | None = Field(
        default=8080,
        ge=0,
        le=65535,
        description="HTTP port: OpenAI-compatible /v1/embeddings and REST (0: a free one; off)",
    )
    store: str = Field(default_factory=default_store_url, description="sqlite:///path or redis://")
    triton_url: str | None = Field(
        default=None,
        description=(
            "host:port of external Tritons (gRPC), comma-separated for several; "
            "unset: start the embedded one"
        ),
    )
    triton_tls_ca: FilePath | None = Field(
        default=None,
        description="root certificate (PEM) of the Triton servers; set: TLS to Triton",
    )
    triton_tls_cert: FilePath | None = Field(
        default=None, description="client certificate chain (PEM) for Triton (needs the key)"
    )
    triton_tls_key: FilePath | None = Field(
        default=None, description="client private key (PEM) for Triton (needs the certificate)"
    )
    triton_secret: SecretStr | None = Field(
        default=None,
        description="sent to Triton on every call (header cde-triton-secret); cde serve sets "
        "it for its embedded Triton",
    )
    triton_timeout_s: float = Field(
        default=60.0, gt=0, description="upper bound of one Triton call"
    )
    embed_path: EmbedPath = Field(
        default="direct",
        description="ensemble: cde_embed; direct: tokenize (see gateway_tokenizer), then "
        "cde_second_stage",
    )
    gateway_tokenizer: GatewayTokenizer = Field(
        default="auto",
        description="direct path: auto tokenizes in the gateway with the tokenizer Triton's "
        "cde_model_info hands out (else cde_tokenize); off always calls cde_tokenize",
    )
    metrics_port: int | None = Field(
        default=9464, ge=0, le=65535, description="Prometheus /metrics HTTP port (off: disabled)"
    )
    log_level: LogLevel = Field(default="INFO", description="log level of the JSON logs on stderr")
    health_interval_s: float = Field(
        default=5.0, gt=0, description="period of the Triton/store check"
    )
    warm_up_default_context: bool = Field(
        default=True, description="embed the built-in default context at start-up, not on first use"
    )
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, description="time in-flight calls get on stop"
    )

    max_texts_per_request: int = Field(default=256, ge=1, description="texts in one Embed request")
    max_text_bytes: int = Field(default=65536, ge=1, description="UTF-8 bytes per text or document")
    max_message_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024 * 1024,
        description="largest gRPC message in or out, and largest HTTP request body",
    )
    max_context_documents: int = Field(
        default=16384, ge=1, description="source documents in one CreateContextSet"
    )
    context_revisions_kept: int = Field(
        default=5,
        ge=1,
        description="context-set revisions kept per set (plus the active one); older inactive "
        "ones are pruned when a new revision is created",
    )
    max_context_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="UTF-8 bytes of all documents in one CreateContextSet",
    )
    max_context_sets_per_tenant: int = Field(
        default=1000,
        ge=0,
        description="context sets one tenant may hold (0: no limit); a create of a new name "
        "beyond it is RESOURCE_EXHAUSTED",
    )
    max_stored_bytes_per_tenant: int = Field(
        default=1024 * 1024 * 1024,
        ge=0,
        description="bytes one tenant's retained context-set revisions may take in the store "
        "(embeddings, documents, sample; 0: no limit); a create beyond it is RESOURCE_EXHAUSTED",
    )
    max_concurrent_streams: int = Field(
        default=64,
        ge=1,
        description="EmbedStream/CreateContextSet calls open at once (server-wide)",
    )
    stream_max_in_flight: int = Field(
        default=8,
        ge=1,
        description="items of one EmbedStream processed concurrently (flow control)",
    )
    max_texts_in_flight: int = Field(
        default=512,
        ge=1,
        description="texts (and context documents) with Triton at once; more wait, by tenant",
    )
    max_queued_texts: int = Field(
        default=16384,
        ge=0,
        description="texts one tenant may have waiting for capacity; beyond it its calls are "
        "refused at once",
    )
    handshake_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a connection that has not completed its TLS/HTTP2 handshake by then is closed",
    )
    stream_idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="a request stream that sends nothing this long is closed (DEADLINE_EXCEEDED)",
    )

    # --- security (README "Security") ---------------------------------------------------------
    api_keys_file: Path | None = Field(
        default=None,
        description="TOML file of hashed API keys and their tenants (unset: auth off)",
    )
    api_keys: str | None = Field(
        default=None,
        description='hashed API keys inline, "tenant:sha256[:admin],..." (adds to the file)',
    )
    tls_cert: FilePath | None = Field(
        default=None,
        description="PEM certificate chain of the gRPC and HTTP ports (with CDE_TLS_KEY)",
    )
    tls_key: FilePath | None = Field(
        default=None, description="PEM private key of the gRPC and HTTP ports (with CDE_TLS_CERT)"
    )
    tls_client_ca: FilePath | None = Field(
        default=None, description="PEM CA(s): require client certificates signed by them"
    )
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="extra plaintext port serving only grpc.health.v1 (unset: none)",
    )
    rate_limit_rps: float = Field(
        default=0.0, ge=0, description="calls per second per tenant, token bucket (0: no limit)"
    )
    rate_limit_burst: int = Field(
        default=0, ge=0, description="bucket size per tenant (0: the rate, at least 1)"
    )
    max_streams_per_tenant: int = Field(
        default=0,
        ge=0,
        description="streaming calls one tenant may have open (0: no limit with auth off, "
        "a quarter of CDE_MAX_CONCURRENT_STREAMS with auth on)",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        """CDE_TLS_CERT and CDE_TLS_KEY go together; a client CA needs them."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both CDE_TLS_CERT and CDE_TLS_KEY, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("CDE_TLS_CLIENT_CA needs CDE_TLS_CERT and CDE_TLS_KEY")
        return self

    @field_validator("health_port", mode="before")
    @classmethod
    def _health_port_off(cls, value: object) -> object:
        """No health-only port for "", "none" or "off"."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @field_validator("http_port", mode="before")
    @classmethod
    def _http_off(cls, value: object) -> object:
        """Disable the HTTP API for "", "none" or "off"."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_off(cls, value: object) -> object:
        """Disable the metrics endpoint for "", "none" or "off"."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @field_validator("triton_url")
    @classmethod
    def _endpoint_list(cls, value: str | None) -> str | None:
        """Normalize "grpc://a:1, b:2" to "a:1,b:2"; refuse empty items and repeats."""
        if value is None or not value.strip():
            return None
        endpoints = []
        for item in value.split(","):
            endpoint = item.strip()
            for scheme in ("grpc://", "http://"):
                endpoint = endpoint.removeprefix(scheme)
            if not endpoint:
                raise ValueError(f"empty endpoint in {value!r}; give host:port[,host:port...]")
            if endpoint in endpoints:
                raise ValueError(f"Triton endpoint {endpoint} is listed twice")
            endpoints.append(endpoint)
        return ",".join(endpoints)

    @model_validator(mode="after")
    def _triton_tls_files(self) -> GatewaySettings:
        """A client certificate for Triton needs its key, and both need the root certificate."""
        if (self.triton_tls_cert is None) != (self.triton_tls_key is None):
            raise ValueError("set both CDE_TRITON_TLS_CERT and CDE_TRITON_TLS_KEY, or neither")
        if self.triton_tls_cert is not None and self.triton_tls_ca is None:
            raise ValueError("CDE_TRITON_TLS_CERT needs CDE_TRITON_TLS_CA (TLS to Triton)")
        return self

    @property
    def triton_endpoints(self) -> list[str]:
        """The Triton endpoints of `triton_url`, in order (empty when unset)."""
        return self.triton_url.split(",") if self.triton_url else []

    @property
    def address(self) -> str:
        """host:port the gateway binds."""
        return f"{self.host}:{self.port}"
