"""Settings and state shared by the sync and async clients: address, TLS, API key, timeout,
retry policy, channel options, and the cached model info (for request limits)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import grpc

from cde_client.models import ModelInfo
from cde_client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy

DEFAULT_ADDRESS = "localhost:50051"
ADDRESS_ENV = "CDE_ADDRESS"
API_KEY_ENV = "CDE_API_KEY"
DEFAULT_TIMEOUT = 120.0
"""Seconds for one unary call (retries included); streams have no deadline by default."""

PemSource = bytes | str | os.PathLike[str]
"""PEM data (bytes, or a str that starts with "-----BEGIN") or the path of a PEM file."""

_MAX_RECEIVE_BYTES = 256 * 1024 * 1024
_BASE_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", -1),
    # Reconnect soon after the server comes back (gRPC's default waits up to 120 s), so
    # that retries across a gateway restart find a working connection.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.primary_user_agent", "cde-client/0.1"),
)


class ClientCore:
    """Everything about a client except its transport (built by `ClientBase`)."""

    def __init__(
        self,
        address: str,
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
        retry: RetryPolicy,
        credentials: grpc.ChannelCredentials | None,
        channel_options: list[tuple[str, Any]],
    ) -> None:
        self.address = address
        self.metadata = metadata
        """Sent with every call (the API key)."""
        self.timeout = timeout
        self.retry = retry
        self.credentials = credentials
        self.channel_options = channel_options
        self.model_info: ModelInfo | None = None
        """The server's model info, fetched once when limits are first needed."""
        self.rng = random.Random()

    def open_channel(self, grpc_module: Any) -> Any:
        """A channel to the server from `grpc` (blocking) or `grpc.aio` (asyncio)."""
        if self.credentials is None:
            return grpc_module.insecure_channel(self.address, options=self.channel_options)
        return grpc_module.secure_channel(
            self.address, self.credentials, options=self.channel_options
        )

    def call_timeout(self, timeout: float | None) -> float | None:
        """The time budget of a unary call: `timeout`, else the client's default."""
        return self.timeout if timeout is None else timeout


class ClientBase:
    """The constructor both clients share."""

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | bool = True,
        channel_options: dict[str, Any] | None = None,
    ) -> None:
        """Connect to the gateway at `address` (host:port; default $CDE_ADDRESS or localhost:50051).

        `api_key`: sent as `authorization: Bearer <key>` (default $CDE_API_KEY).
        `tls`: use TLS; implied by `root_certificates` (PEM of the CAs to trust; default:
        the system's), `client_certificate` + `client_key` (for client-certificate auth) and
        `server_name` (the name the server's certificate is checked against).
        `timeout`: default seconds for each unary call, retries included (None: no limit).
        `retry`: a `RetryPolicy`, True for the default one, False to never retry.
        `channel_options`: extra gRPC channel options.
        """
        if (client_certificate is None) != (client_key is None):
            raise ValueError("client_certificate and client_key go together")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        credentials = None
        if tls or any(v is not None for v in (root_certificates, client_certificate, server_name)):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(root_certificates),
                private_key=_read_pem(client_key),
                certificate_chain=_read_pem(client_certificate),
            )
        options = dict(_BASE_CHANNEL_OPTIONS)
        if server_name:
            options["grpc.ssl_target_name_override"] = server_name
        options.update(channel_options or {})
        if retry is True:
            retry = DEFAULT_RETRY
        elif retry is False:
            retry = NO_RETRY
        self._core = ClientCore(
            address=address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS,
            metadata=(("authorization", f"Bearer {key}"),) if key else (),
            timeout=timeout,
            retry=retry,
            credentials=credentials,
            channel_options=list(options.items()),
        )
        self._connect()

    def _connect(self) -> None:
        """Set up the transport (each client's own)."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """The server address this client talks to."""
        return self._core.address

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._core.address!r})"


def _read_pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode("ascii")
    return Path(source).read_bytes()
