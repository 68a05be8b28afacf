"""Auth, tenant isolation, TLS, body limits and metrics of the HTTP API, like the gRPC tests."""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx
import pytest
from cde_client import CdeClient

from integration.conftest import Certificate, TenantKeys, http_url

DOCS = ["alpha document", "beta document"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_malformed_and_unknown_keys_are_401(
    gateway_factory: Any, tenant_keys: TenantKeys
) -> None:
    base = http_url(gateway_factory(api_keys=tenant_keys.inline))
    for headers in ({}, {"Authorization": "Basic abc"}, bearer("cde_unknown")):
        answer = httpx.post(f"{base}/v1/embed", json={"texts": ["a"]}, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["error"]["type"] == "authentication_error"
    # auth comes before the body is validated
    assert httpx.post(f"{base}/v1/embed", json={"bad": 1}).status_code == 401
    ok = httpx.post(f"{base}/v1/embed", json={"texts": ["a"]}, headers=bearer(tenant_keys.acme))
    assert ok.status_code == 200
    assert httpx.get(f"{base}/healthz").status_code == 200  # probes need no key


def test_tenants_are_isolated(gateway_factory: Any, tenant_keys: TenantKeys) -> None:
    gateway = gateway_factory(api_keys=tenant_keys.inline)
    base = http_url(gateway)
    acme, beta = bearer(tenant_keys.acme), bearer(tenant_keys.beta)
    made = httpx.post(
        f"{base}/v1/context-sets", json={"name": "shared", "documents": DOCS}, headers=acme
    )
    assert made.status_code == 201
    assert httpx.get(f"{base}/v1/context-sets/shared", headers=beta).status_code == 404
    beta_models = httpx.get(f"{base}/v1/models", headers=beta).json()["data"]
    assert "shared" not in [model["id"] for model in beta_models]
    acme_models = httpx.get(f"{base}/v1/models", headers=acme).json()["data"]
    assert {"id": "shared", "owned_by": "acme"}.items() <= acme_models[1].items()
    body = {"model": "shared", "input": "x"}
    assert httpx.post(f"{base}/v1/embeddings", json=body, headers=beta).status_code == 404
    assert httpx.post(f"{base}/v1/embeddings", json=body, headers=acme).status_code == 200
    everyone = {"all_tenants": True}
    denied = httpx.get(f"{base}/v1/context-sets", params=everyone, headers=acme)
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    admin = httpx.get(f"{base}/v1/context-sets", params=everyone, headers=bearer(tenant_keys.admin))
    assert "acme/shared" in [item["name"] for item in admin.json()["context_sets"]]
    # the gRPC side sees the same tenant's set with the same key
    with CdeClient(gateway.address, api_key=tenant_keys.acme) as client:
        assert client.get_context_set("shared").context_id == made.json()["context_id"]


def test_tls_and_mutual_tls(
    gateway_factory: Any, certificates: dict[str, Certificate], tenant_keys: TenantKeys
) -> None:
    server, client_cert = certificates["server"], certificates["client"]
    gateway = gateway_factory(tls_cert=server.cert, tls_key=server.key)
    assert gateway.gateway.http_url.startswith("https://")
    base = http_url(gateway, "https")
    trusted = ssl.create_default_context(cafile=str(server.cert))
    assert httpx.get(f"{base}/v1/prompts", verify=trusted).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/v1/prompts", verify=ssl.create_default_context())
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{gateway.gateway.http_port}/v1/prompts")

    mutual = gateway_factory(
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=client_cert.cert,
        api_keys=tenant_keys.inline,
    )
    base = http_url(mutual, "https")
    with_cert = ssl.create_default_context(cafile=str(server.cert))
    with_cert.load_cert_chain(str(client_cert.cert), str(client_cert.key))
    answer = httpx.get(f"{base}/v1/prompts", verify=with_cert, headers=bearer(tenant_keys.acme))
    assert answer.status_code == 200
    assert httpx.get(f"{base}/v1/prompts", verify=with_cert).status_code == 401
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/v1/prompts", verify=trusted, headers=bearer(tenant_keys.acme))


def test_body_limit_is_413_and_bad_json_is_400(gateway_factory: Any) -> None:
    limit = 1024 * 1024
    base = http_url(gateway_factory(max_message_bytes=limit))
    big = {"texts": ["a" * 1000] * 1100}
    too_large = httpx.post(f"{base}/v1/embed", json=big, timeout=60)
    assert too_large.status_code == 413
    assert too_large.json()["error"]["message"].startswith("the request body is larger")

    def chunks() -> Any:  # no Content-Length: the limit is counted while reading
        for _ in range(1100):
            yield b'"' + b"x" * 1000 + b'"\n'

    streamed = httpx.post(f"{base}/v1/context-sets/big/documents", content=chunks(), timeout=60)
    assert streamed.status_code == 413
    for body in (b"{not json", b"[]", b'{"texts": "not a list"}', b"\xff\xfe"):
        answer = httpx.post(
            f"{base}/v1/embed", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, body
        assert answer.json()["error"]["code"] == "invalid_argument"
    deep = b"[" * 100_000 + b"]" * 100_000
    answer = httpx.post(
        f"{base}/v1/embeddings", content=deep, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400


def test_metrics_carry_the_transport(gateway_factory: Any) -> None:
    gateway = gateway_factory(metrics_port=0)
    httpx.post(f"{http_url(gateway)}/v1/embed", json={"texts": ["a"]})
    httpx.post(f"{http_url(gateway)}/v1/embed", json={"texts": []})
    url = f"http://127.0.0.1:{gateway.gateway.metrics_port}/metrics"
    wanted = (
        'cde_gateway_requests_total{code="OK",rpc="Embed",transport="http"} 1.0',
        'cde_gateway_requests_total{code="INVALID_ARGUMENT",rpc="Embed",transport="http"} 1.0',
    )
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(url).text
        if all(line in text for line in wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for line in wanted:
        assert line in text
