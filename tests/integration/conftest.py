"""Fixtures of the HTTP API tests: base URLs, the served model's name and tokenizer, API keys
and certificates. Gateways come from the suite's fixtures, by name (`gateway`,
`gateway_factory`, `client`, `unique`)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cde_client import CdeClient
from cde_model.description import describe_model
from cde_model.tokenizer import TextTokenizer
from cde_server.gateway.auth import generate_key, hash_key


def http_url(gateway: Any, scheme: str = "http") -> str:
    """Base URL of a test gateway's HTTP API (`gateway`: a started gateway thread)."""
    assert gateway.gateway is not None and gateway.gateway.http_port
    return f"{scheme}://127.0.0.1:{gateway.gateway.http_port}"


@pytest.fixture(scope="session")
def base_url(gateway: Any) -> str:
    """The session gateway's HTTP API."""
    return http_url(gateway)


@pytest.fixture(scope="session")
def gateway_address(gateway: Any) -> str:
    """The session gateway's gRPC host:port."""
    address: str = gateway.address
    return address


@pytest.fixture(scope="session")
def served_model(gateway: Any) -> str:
    """The served model's name (its own model id in /v1/models)."""
    with CdeClient(gateway.address) as client:
        return client.model_info().model_name


@pytest.fixture(scope="session")
def tokenizer(triton_process: Any) -> TextTokenizer:
    """The served model's tokenizer (for token-id input)."""
    return describe_model(str(triton_process.settings.model)).tokenizer


@pytest.fixture(scope="session")
def stubs_run_this_checkout() -> bool:
    """Whether Triton's python stubs import this checkout's cde_server. They ignore PYTHONPATH
    (like `python -I`), so a worktree beside another editable install serves that one's
    handlers; checks of handler changes then cannot pass."""
    found = subprocess.run(
        [sys.executable, "-I", "-c", "import cde_server; print(cde_server.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    here = Path(__file__).resolve().parents[2]
    return found.startswith(str(here / "server"))


@dataclass(frozen=True)
class TenantKeys:
    """API keys of two tenants and an admin, and the CDE_API_KEYS value that knows them."""

    acme: str
    beta: str
    admin: str
    inline: str


@pytest.fixture
def tenant_keys() -> TenantKeys:
    """Fresh keys: tenants acme and beta, plus an admin key of tenant ops."""
    acme, beta, admin = generate_key(), generate_key(), generate_key()
    inline = f"acme:{hash_key(acme)},beta:{hash_key(beta)},ops:{hash_key(admin)}:admin"
    return TenantKeys(acme, beta, admin, inline)


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and its key."""

    cert: Path
    key: Path


def self_signed(folder: Path, name: str) -> Certificate:
    """A certificate for localhost/127.0.0.1, made with the openssl CLI."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Certificate]:
    """Server, client and unrelated certificates."""
    folder = tmp_path_factory.mktemp("http-tls")
    return {name: self_signed(folder, name) for name in ("server", "client", "other")}
