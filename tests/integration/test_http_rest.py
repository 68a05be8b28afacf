"""REST for the native API on a real stack: the same results as the gRPC client, context sets
from JSON or NDJSON, pagination, prompts, model info, probes, OpenAPI, request ids, and the
addresses `cde serve` prints."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shlex
import subprocess
import time
from typing import Any

import httpx
import numpy as np
import pytest
from cde_client import CdeClient

DOCS = ["the cat sat on the mat", "stock markets fell sharply", "a recipe for apple pie"]


@pytest.fixture
def api(base_url: str) -> Any:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http


def test_embed_float_and_base64_equal_the_grpc_client(
    api: httpx.Client, client: CdeClient, unique: str
) -> None:
    client.create_context_set(unique, DOCS)
    expected = client.embed(DOCS, prompt="query", context=unique)
    body = {"texts": DOCS, "prompt": "query", "context_set": unique}
    floats = api.post("/v1/embed", json=body).json()
    np.testing.assert_allclose(np.array(floats["embeddings"]), expected.embeddings, atol=1e-6)
    assert floats["context_revision"] == expected.context_revision
    assert floats["token_counts"] == list(expected.token_counts)
    assert floats["model_id"] == expected.model_id and floats["dim"] == expected.embeddings.shape[1]
    packed = api.post("/v1/embed", json={**body, "encoding_format": "base64"}).json()
    rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in packed["embeddings"]]
    np.testing.assert_allclose(np.stack(rows), expected.embeddings, atol=1e-6)
    raw = api.post("/v1/embed", json={**body, "normalize": False}).json()
    assert abs(np.linalg.norm(raw["embeddings"][0]) - 1.0) > 1e-4
    refused = api.post("/v1/embed", json={"texts": ["x " * 5000], "truncate": False})
    assert refused.status_code == 400 and "truncate is false" in refused.json()["error"]["message"]


def test_context_sets_json_ndjson_list_get_delete(
    api: httpx.Client, client: CdeClient, unique: str
) -> None:
    created = api.post("/v1/context-sets", json={"name": f"{unique}-a", "documents": DOCS})
    assert created.status_code == 201, created.text
    assert created.json()["revision"] == 1 and created.json()["compatible"] is True
    again = api.post("/v1/context-sets", json={"name": f"{unique}-a", "documents": DOCS})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_exists"
    lines = "\n".join(json.dumps(doc) for doc in DOCS[:2]) + "\n" + json.dumps(DOCS[2:])
    uploaded = api.post(
        f"/v1/context-sets/{unique}-b/documents",
        params={"seed": 7},
        content=lines.encode(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["source_document_count"] == len(DOCS)
    bad = api.post(f"/v1/context-sets/{unique}-c/documents", content=b'"ok"\n{"no": 1}\n')
    assert bad.status_code == 400 and "NDJSON line 2" in bad.json()["error"]["message"]
    # the gRPC client sees the same sets, and gets the same vectors through them
    assert client.get_context_set(f"{unique}-b").context_id == uploaded.json()["context_id"]
    names: list[str] = []
    token = ""
    while True:
        page = api.get("/v1/context-sets", params={"page_size": 1, "page_token": token}).json()
        names += [item["name"] for item in page["context_sets"]]
        token = page["next_page_token"]
        if not token:
            break
    assert {f"{unique}-a", f"{unique}-b"} <= set(names)
    detail = api.get(
        f"/v1/context-sets/{unique}-a",
        params={"include_documents": True, "include_embeddings": "true"},
    ).json()
    stored = client.get_context_set(f"{unique}-a", include_embeddings=True)
    assert stored.dataset_embeddings is not None
    np.testing.assert_allclose(np.array(detail["dataset_embeddings"]), stored.dataset_embeddings)
    assert len(detail["documents"]) == detail["context_set"]["context_size"]
    assert api.delete(f"/v1/context-sets/{unique}-a").status_code == 204
    gone = api.get(f"/v1/context-sets/{unique}-a")
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "invalid_request_error"
    assert api.get("/v1/context-sets", params={"page_token": "garbage!"}).status_code == 400


def test_prompts_and_model_info(api: httpx.Client, client: CdeClient, unique: str) -> None:
    names = [p["name"] for p in api.get("/v1/prompts").json()["prompts"]]
    assert names[:4] == ["query", "document", "classification", "clustering"]
    put = api.put(f"/v1/prompts/{unique}", json={"text": "legal: "})
    assert put.json() == {"name": unique, "text": "legal: ", "builtin": False}
    via_http = api.post("/v1/embed", json={"texts": ["a"], "prompt": unique}).json()
    np.testing.assert_allclose(
        via_http["embeddings"], client.embed(["a"], prompt=unique).embeddings, atol=1e-6
    )
    assert api.put("/v1/prompts/query", json={"text": "x"}).status_code == 400
    assert api.delete(f"/v1/prompts/{unique}").status_code == 204
    assert api.delete(f"/v1/prompts/{unique}").status_code == 404
    info = api.get("/v1/model-info").json()
    grpc_info = client.model_info()
    assert info["model_name"] == grpc_info.model_name
    assert info["hidden_size"] == grpc_info.hidden_size
    assert info["family"] == grpc_info.family
    assert info["limits"] == dataclasses.asdict(grpc_info.limits)


def test_probes_openapi_docs_and_request_ids(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "SERVING"}
    document = api.get("/openapi.json").json()
    for path in ("/v1/embeddings", "/v1/models", "/v1/embed", "/v1/context-sets", "/readyz"):
        assert path in document["paths"]
    assert "422" not in json.dumps(document["paths"])
    assert "examples" in json.dumps(document["components"]["schemas"]["EmbedRequest"])
    assert "swagger" in api.get("/docs").text.lower()
    answer = api.post("/v1/embed", json={"texts": ["a"]}, headers={"x-request-id": "req-http-1"})
    assert answer.headers["x-request-id"] == "req-http-1"
    assert answer.json()["request_id"] == "req-http-1"
    assert len(api.get("/healthz").headers["x-request-id"]) == 32
    missing = api.get("/no/such/route")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {
        "message", "type", "param", "code"
    }  # fmt: skip


def test_answers_are_not_held_back_by_nagle(api: httpx.Client) -> None:
    """Responses go out at once (TCP_NODELAY on accepted sockets), not after a delayed ACK."""
    api.get("/healthz")
    durations = []
    for _ in range(11):
        started = time.perf_counter()
        api.get("/healthz")
        durations.append(time.perf_counter() - started)
    assert sorted(durations)[5] < 0.02, durations  # Nagle + delayed ACK: about 40 ms each


def test_not_serving_is_503_on_readyz(gateway_factory: Any) -> None:
    gateway = gateway_factory(triton_url="127.0.0.1:1")
    port = gateway.gateway.http_port
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json() == {"status": "NOT_SERVING"}
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
    down = httpx.post(f"http://127.0.0.1:{port}/v1/embed", json={"texts": ["a"]}, timeout=30)
    assert down.status_code == 503 and down.json()["error"]["type"] == "server_error"


def test_cde_serve_prints_the_http_address_and_a_working_curl(
    gateway_process_factory: Any,
) -> None:
    process = gateway_process_factory(http_port="0")
    output = process.output()
    http = re.search(r"^  http: (http://\S+)$", output, re.M)
    assert http is not None, output
    curl = next(line.strip() for line in output.splitlines() if line.strip().startswith("curl"))
    result = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60)
    answer = json.loads(result.stdout)
    assert answer["object"] == "list" and len(answer["data"][0]["embedding"]) > 0
    assert httpx.get(f"{http.group(1)}/readyz", timeout=30).status_code in (200, 503)
    off = gateway_process_factory(http_port="off")
    assert "  http: off" in off.output()
