"""API keys and tenants, TLS, mTLS and the health-only port, on real gateways (issue 7)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cde_client import (
    CdeClient,
    HealthStatus,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from cde_server.gateway.app import Gateway
from cde_server.gateway.auth import KeysFileError, generate_key, hash_key, key_entry_toml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.gateway_fixtures import GatewayFactory, GatewayThread
from support.tls_certs import Pem, self_signed

DOCS = [f"document {i} about topic {i % 3}" for i in range(6)]


@dataclass(frozen=True)
class Keys:
    """A keys file with tenants acme and beta and an admin key of tenant ops."""

    path: Path
    acme: str
    beta: str
    admin: str


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    acme, beta, admin = generate_key(), generate_key(), generate_key()
    path = tmp_path / "keys.toml"
    path.write_text(
        key_entry_toml("acme", hash_key(acme))
        + key_entry_toml("beta", hash_key(beta))
        + key_entry_toml("ops", hash_key(admin), admin=True)
    )
    return Keys(path, acme, beta, admin)


def client(gateway: GatewayThread, key: str | None, **options: object) -> CdeClient:
    return CdeClient(gateway.address, api_key=key or "", retry=False, timeout=30, **options)  # type: ignore[arg-type]


def rejections(gateway: GatewayThread, reason: str) -> float:
    assert gateway.gateway is not None
    value = gateway.gateway.metrics.registry.get_sample_value(
        "cde_gateway_rejections_total", {"reason": reason}
    )
    return value or 0.0


def test_missing_or_wrong_key_is_unauthenticated(
    gateway_factory: GatewayFactory, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDE_API_KEY", raising=False)
    gateway = gateway_factory(api_keys_file=keys.path)
    for key in (None, "cde_wrong", keys.acme + "x"):
        with client(gateway, key) as anonymous:
            with pytest.raises(Unauthenticated, match="API key"):
                anonymous.list_prompts()
            with pytest.raises(Unauthenticated):
                anonymous.embed(["hello"])
            assert anonymous.health() is not None  # health needs no key
    with grpc.insecure_channel(gateway.address) as channel:
        malformed = [("authorization", f"Basic {keys.acme}")]
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10, metadata=malformed)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        services = {s.name for a in answers for s in a.list_services_response.service}
        assert "cde.v1.EmbeddingService" in services  # reflection needs no key either
    assert rejections(gateway, "unauthenticated") == 6
    with client(gateway, keys.acme) as acme:
        assert [p.name for p in acme.list_prompts()][:2] == ["query", "document"]


def test_tenants_are_isolated(store_url: str, gateway_factory: GatewayFactory, keys: Keys) -> None:
    gateway = gateway_factory(store_url, api_keys_file=keys.path)
    with (
        client(gateway, keys.acme) as acme,
        client(gateway, keys.beta) as beta,
        client(gateway, keys.admin) as admin,
    ):
        created = acme.create_context_set("docs", DOCS)
        acme.put_prompt("legal", "legal: ")
        assert created.name == "docs"

        # beta sees nothing of acme's, and is told nothing about it
        for attempt in (
            lambda: beta.get_context_set("docs"),
            lambda: beta.embed(["q"], context="docs"),
            lambda: beta.delete_context_set("docs"),
        ):
            with pytest.raises(NotFound, match=r'^context set "docs" not found'):
                attempt()
        with pytest.raises(NotFound, match='prompt "legal" not found'):
            beta.embed(["q"], prompt="legal")
        with pytest.raises(NotFound, match='prompt "legal" not found'):
            beta.delete_prompt("legal")
        assert list(beta.list_context_sets()) == []
        assert [p.name for p in beta.list_prompts() if not p.builtin] == []

        # the same names are free for beta (no ALREADY_EXISTS leak)
        beta.create_context_set("docs", DOCS[:2])
        beta.put_prompt("legal", "beta legal: ")
        assert beta.get_context_set("docs").source_document_count == 2
        assert acme.get_context_set("docs").source_document_count == len(DOCS)
        assert {p.name: p.text for p in acme.list_prompts()}["legal"] == "legal: "
        assert {p.name: p.text for p in beta.list_prompts()}["legal"] == "beta legal: "
        assert [s.name for s in acme.list_context_sets()] == ["docs"]
        assert acme.embed(["q"], context="docs", prompt="legal").embeddings.shape[0] == 1

        # admins list everyone's sets; others may not
        assert [s.name for s in admin.list_context_sets(all_tenants=True, page_size=1)] == [
            "acme/docs",
            "beta/docs",
        ]
        assert list(admin.list_context_sets()) == []  # its own tenant (ops) has none
        with pytest.raises(PermissionDenied, match="admin"):
            list(acme.list_context_sets(all_tenants=True))

        beta.delete_context_set("docs")
        beta.delete_prompt("legal")
        assert acme.get_context_set("docs").name == "docs"
        with pytest.raises(InvalidArgument):
            acme.get_context_set("beta/docs")  # names cannot reach into a namespace

    # with auth off the same store shows the bare names only; acme's set is out of reach
    gateway.restart(api_keys_file=None)
    with client(gateway, None) as local:
        assert list(local.list_context_sets()) == []
        assert [s.name for s in local.list_context_sets(all_tenants=True)] == ["acme/docs"]
        local.create_context_set("docs", DOCS[:3])
        assert local.get_context_set("docs").source_document_count == 3


def test_auth_off_by_default(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory()
    assert gateway.gateway is not None
    assert gateway.gateway.security_summary() == [
        "auth: off (no CDE_API_KEYS_FILE or CDE_API_KEYS)",
        "tls: off",
    ]
    with client(gateway, "any-key-is-ignored") as anybody:
        anybody.put_prompt("p1", "p: ")
        assert "p1" in [p.name for p in anybody.list_prompts()]


def test_bad_keys_file_is_refused(tmp_path: Path, triton_grpc_url: str) -> None:
    from support.gateway_fixtures import gateway_settings

    bad = tmp_path / "keys.toml"
    bad.write_text('[[keys]]\ntenant = "a/b"\nkey_sha256 = "abc"\n')
    settings = gateway_settings(triton_grpc_url, "sqlite://:memory:", api_keys_file=bad)
    with pytest.raises(KeysFileError, match="tenant") as error:
        Gateway(settings)
    assert "key_sha256" in str(error.value)
    with pytest.raises(KeysFileError, match="cannot read"):
        Gateway(settings.model_copy(update={"api_keys_file": tmp_path / "missing.toml"}))


def test_inline_keys_without_a_file(gateway_factory: GatewayFactory, keys: Keys) -> None:
    inline = f"acme:{hash_key(keys.acme)}, ops:{hash_key(keys.admin)}:admin"
    gateway = gateway_factory(api_keys=inline)
    assert gateway.gateway is not None
    assert gateway.gateway.security_summary()[0].startswith("auth: on, 2 keys, 2 tenants, 1 admin")
    with client(gateway, keys.acme) as acme, client(gateway, keys.admin) as admin:
        acme.create_context_set("docs", DOCS[:3])
        assert [s.name for s in admin.list_context_sets(all_tenants=True)] == ["acme/docs"]
    with client(gateway, keys.beta) as beta, pytest.raises(Unauthenticated):
        beta.list_prompts()  # beta's key is only in the file, which is not configured here
    # file and inline keys add up
    both = gateway_factory(api_keys_file=keys.path, api_keys=f"gamma:{hash_key('g-key')}")
    with client(both, "g-key") as gamma, client(both, keys.beta) as beta:
        gamma.put_prompt("p", "p: ")
        assert "p" not in [p.name for p in beta.list_prompts()]


@pytest.mark.parametrize(
    ("inline", "problem"),
    [
        ("acme", "not"),
        ("acme:abc", "64 hex"),
        ("a/b:" + "0" * 64, "tenant"),
        ("acme:x:root", "not"),
        (f"a:{'1' * 64},b:{'1' * 64}", "twice"),
    ],
)
def test_bad_inline_keys_are_refused(
    inline: str, problem: str, tmp_path: Path, triton_grpc_url: str
) -> None:
    from support.gateway_fixtures import gateway_settings

    settings = gateway_settings(triton_grpc_url, "sqlite://:memory:", api_keys=inline)
    with pytest.raises(KeysFileError, match="CDE_API_KEYS") as error:
        Gateway(settings)
    assert problem in str(error.value)


# --- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    server: Pem
    client: Pem
    other: Pem


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    folder = tmp_path_factory.mktemp("gateway-tls")
    yield Certs(*(self_signed(folder, name) for name in ("server", "client", "other")))


def wait_serving(check: health_pb2_grpc.HealthStub) -> None:
    deadline = time.monotonic() + 30
    while True:
        status = check.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
            assert status == health_pb2.HealthCheckResponse.SERVING
            return
        time.sleep(0.1)


def test_tls_with_plaintext_health_port(gateway_factory: GatewayFactory, certs: Certs) -> None:
    gateway = gateway_factory(tls_cert=certs.server.cert, tls_key=certs.server.key, health_port=0)
    assert gateway.gateway is not None and gateway.gateway.health_port
    with client(gateway, None, root_certificates=certs.server.cert) as secure:
        assert secure.health() in (HealthStatus.SERVING, HealthStatus.NOT_SERVING)
        assert next(p.name for p in secure.list_prompts()) == "query"
    with client(gateway, None) as plaintext, pytest.raises(Unavailable):
        plaintext.list_prompts()
    untrusting = client(gateway, None, root_certificates=certs.other.cert)
    with untrusting, pytest.raises(Unavailable):
        untrusting.list_prompts()
    with grpc.insecure_channel(f"127.0.0.1:{gateway.gateway.health_port}") as channel:
        wait_serving(health_pb2_grpc.HealthStub(channel))
        service = health_pb2.HealthCheckRequest(service="cde.v1.EmbeddingService")
        assert health_pb2_grpc.HealthStub(channel).Check(service, timeout=10).status == 1
        from cde.v1 import embedding_service_pb2 as pb
        from cde.v1 import embedding_service_pb2_grpc as pb_grpc

        with pytest.raises(grpc.RpcError) as error:  # the health port serves nothing else
            pb_grpc.EmbeddingServiceStub(channel).ListPrompts(pb.ListPromptsRequest(), timeout=10)
        assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "health-only plaintext port" in gateway.gateway.security_summary()[1]


def test_mutual_tls_with_api_key(gateway_factory: GatewayFactory, certs: Certs, keys: Keys) -> None:
    gateway = gateway_factory(
        tls_cert=certs.server.cert,
        tls_key=certs.server.key,
        tls_client_ca=certs.client.cert,
        api_keys_file=keys.path,
    )
    assert gateway.gateway is not None
    assert gateway.gateway.security_summary()[1] == "tls: on, client certificates required"
    mtls = {
        "root_certificates": certs.server.cert,
        "client_certificate": certs.client.cert,
        "client_key": certs.client.key,
    }
    with client(gateway, keys.acme, **mtls) as acme:
        assert next(p.name for p in acme.list_prompts()) == "query"
    with client(gateway, None, **mtls) as keyless, pytest.raises(Unauthenticated):
        keyless.list_prompts()
    no_cert = {"root_certificates": certs.server.cert}
    with client(gateway, keys.acme, **no_cert) as refused, pytest.raises(Unavailable):
        refused.list_prompts()
    wrong_cert = {**mtls, "client_certificate": certs.other.cert, "client_key": certs.other.key}
    with client(gateway, keys.acme, **wrong_cert) as refused, pytest.raises(Unavailable):
        refused.list_prompts()
