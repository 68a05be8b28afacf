"""The official `openai` SDK against /v1/embeddings and /v1/models on a real stack: the same
vectors as the gRPC client, the model string's grammar, and typed SDK exceptions."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from cde_client import CdeClient
from cde_model.tokenizer import TextTokenizer

from integration.conftest import TenantKeys, http_url

DOCS = ["the cat sat on the mat", "stock markets fell sharply", "a recipe for apple pie"]
QUERIES = ["where did the cat sit", "how do I bake a pie"]
TOLERANCE = 1e-6


def sdk(base_url: str, **options: Any) -> openai.OpenAI:
    """A sync SDK client on the gateway (no retries unless asked)."""
    options.setdefault("api_key", "not-checked")
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=f"{base_url}/v1", **options)


def vectors(response: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


@pytest.fixture
def context_set(client: CdeClient, unique: str) -> str:
    """A context set of DOCS, made over gRPC."""
    client.create_context_set(unique, DOCS)
    return unique


def test_sdk_default_and_float_encodings_equal_the_grpc_client(
    base_url: str, client: CdeClient, context_set: str
) -> None:
    expected = client.embed_queries(QUERIES, context=context_set).embeddings
    with sdk(base_url) as api:
        default = api.embeddings.create(model=f"{context_set}:query", input=QUERIES)
        floats = api.embeddings.create(
            model=f"{context_set}:query", input=QUERIES, encoding_format="float"
        )
    for response in (default, floats):
        np.testing.assert_allclose(vectors(response), expected, atol=TOLERANCE, rtol=0)
        assert response.object == "list" and response.model == f"{context_set}:query"
        assert [item.index for item in response.data] == [0, 1]
        assert response.data[0].object == "embedding"
        assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_model_string_grammar(
    base_url: str, client: CdeClient, context_set: str, served_model: str
) -> None:
    documents = client.embed_documents(DOCS[:1], context=context_set).embeddings
    default_context = client.embed_queries(QUERIES[:1]).embeddings
    revision = client.get_context_set(context_set).revision
    with sdk(base_url) as api:
        for model in (context_set, f"{context_set}:document", f"{context_set}@{revision}"):
            got = vectors(api.embeddings.create(model=model, input=DOCS[0]))
            np.testing.assert_allclose(got, documents, atol=TOLERANCE, rtol=0)
        got = vectors(api.embeddings.create(model=f"{served_model}:query", input=QUERIES[:1]))
        np.testing.assert_allclose(got, default_context, atol=TOLERANCE, rtol=0)
        with pytest.raises(openai.NotFoundError) as missing:
            api.embeddings.create(model=f"{context_set}@{revision + 1}", input="x")
        assert f"has no revision {revision + 1}" in missing.value.message
        # extension fields (extra_body) override the model string
        override = api.embeddings.create(
            model=served_model,
            input=QUERIES[:1],
            extra_body={"context_set": context_set, "prompt": "query", "normalize": False},
        )
        raw = client.embed_queries(QUERIES[:1], context=context_set, normalize=False).embeddings
        np.testing.assert_allclose(vectors(override), raw, atol=1e-5, rtol=1e-6)


def test_base64_is_little_endian_float32(base_url: str, client: CdeClient) -> None:
    body = {"model": "x", "input": "hello", "encoding_format": "base64"}
    served = client.model_info()
    body["model"] = served.model_name
    answer = httpx.post(f"{base_url}/v1/embeddings", json=body, timeout=30).json()
    row = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(row, client.embed(["hello"]).embeddings[0], atol=TOLERANCE)
    assert row.shape == (served.hidden_size,)


def test_async_sdk(base_url: str, client: CdeClient, context_set: str) -> None:
    expected = client.embed_documents(DOCS, context=context_set).embeddings

    async def run() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as api:
            return list(
                await asyncio.gather(
                    api.embeddings.create(model=context_set, input=DOCS),
                    api.embeddings.create(model=context_set, input=DOCS, encoding_format="float"),
                )
            )

    for response in asyncio.run(run()):
        np.testing.assert_allclose(vectors(response), expected, atol=TOLERANCE, rtol=0)


def test_token_id_input(
    base_url: str,
    client: CdeClient,
    context_set: str,
    tokenizer: TextTokenizer,
    stubs_run_this_checkout: bool,
) -> None:
    ids, mask, _ = tokenizer.encode_with_truncation(QUERIES)
    rows = [[int(i) for i in row[keep == 1][1:-1]] for row, keep in zip(ids, mask, strict=True)]
    expected = client.embed_queries(QUERIES, context=context_set).embeddings
    with sdk(base_url) as api:
        many = api.embeddings.create(model=f"{context_set}:query", input=rows)
        one = api.embeddings.create(model=f"{context_set}:query", input=rows[0])
        np.testing.assert_allclose(vectors(many), expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(vectors(one), expected[:1], atol=1e-5, rtol=0)
        info = httpx.get(f"{base_url}/v1/model-info", timeout=30).json()
        if stubs_run_this_checkout:  # cde_model_info reports the tokenizer's vocabulary
            assert info["vocab_size"] == tokenizer.vocab_size
        with pytest.raises(openai.BadRequestError) as outside:
            api.embeddings.create(model=context_set, input=[[1, tokenizer.vocab_size]])
        assert "must lie in [0," in outside.value.message
        with pytest.raises(openai.BadRequestError):
            api.embeddings.create(model=context_set, input=[[1, -1]])
        too_long = [[1000] * (info["max_tokens"] + 5)]
        cut = api.embeddings.create(model=context_set, input=too_long)
        assert cut.usage.prompt_tokens == info["max_tokens"]
        with pytest.raises(openai.BadRequestError):
            api.embeddings.create(model=context_set, input=too_long, extra_body={"truncate": False})


def test_models_list_and_retrieve(base_url: str, context_set: str, served_model: str) -> None:
    with sdk(base_url) as api:
        ids = [model.id for model in api.models.list()]
        assert ids[0] == served_model and context_set in ids
        assert api.models.retrieve(context_set).id == context_set
        assert api.models.retrieve(served_model).object == "model"
        with pytest.raises(openai.NotFoundError):
            api.models.retrieve("no-such-set-anywhere")


def test_retrieve_checks_the_revision_in_the_id(
    base_url: str, client: CdeClient, context_set: str, served_model: str
) -> None:
    client.create_context_set(context_set, DOCS[:2], replace=True)  # revision 2, active
    client.delete_context_set(f"{context_set}@1")
    with sdk(base_url) as api:
        assert api.models.retrieve(f"{context_set}@2").id == f"{context_set}@2"
        assert api.models.retrieve(f"{context_set}@2:query").object == "model"
        with pytest.raises(openai.NotFoundError) as missing:
            api.models.retrieve(f"{context_set}@7")
        assert "has no revision 7; the latest is 2" in missing.value.message
        with pytest.raises(openai.NotFoundError) as pruned:
            api.models.retrieve(f"{context_set}@1")
        assert "revision 1 was pruned or deleted" in pruned.value.message
        assert api.models.retrieve(f"{served_model}@0").id == f"{served_model}@0"
        with pytest.raises(openai.NotFoundError) as default:
            api.models.retrieve(f"{served_model}@3")
        assert "has only revision 0, not 3" in default.value.message
        # the same answers as /v1/embeddings gives for those model strings
        for model, retrieved in (
            (f"{context_set}@7", missing),
            (f"{context_set}@1", pruned),
            (f"{served_model}@3", default),
        ):
            with pytest.raises(openai.NotFoundError) as embedded:
                api.embeddings.create(model=model, input="x")
            assert embedded.value.message == retrieved.value.message


def test_typed_sdk_exceptions(base_url: str, served_model: str) -> None:
    with sdk(base_url) as api:
        with pytest.raises(openai.NotFoundError) as unknown:
            api.embeddings.create(model="no-such-model-or-set", input="x")
        assert unknown.value.status_code == 404
        with pytest.raises(openai.NotFoundError):
            api.embeddings.create(model="not a valid name", input="x")
        with pytest.raises(openai.BadRequestError) as shortened:
            api.embeddings.create(model=served_model, input="x", dimensions=8)
        assert "not trained for shortened vectors" in shortened.value.message
        error = shortened.value.body
        assert isinstance(error, dict) and error["param"] == "dimensions"
        assert error["type"] == "invalid_request_error"
        with pytest.raises(openai.BadRequestError):
            api.embeddings.create(model=served_model, input=[])
        with pytest.raises(openai.NotFoundError):
            api.embeddings.create(model=f"{served_model}:no-such-prompt", input="x")


def test_bad_key_is_authentication_error(gateway_factory: Any, tenant_keys: TenantKeys) -> None:
    gateway = gateway_factory(api_keys=tenant_keys.inline)
    with sdk(http_url(gateway), api_key="cde_wrong") as api:
        with pytest.raises(openai.AuthenticationError) as refused:
            api.models.list()
        assert refused.value.status_code == 401
    with sdk(http_url(gateway), api_key=tenant_keys.acme) as api:
        assert len(api.models.list().data) >= 1


def test_rate_limit_is_rate_limit_error_with_retry_hint(
    gateway_factory: Any, served_model: str
) -> None:
    gateway = gateway_factory(rate_limit_rps=0.2, rate_limit_burst=1)
    with sdk(http_url(gateway)) as api:
        api.embeddings.create(model=served_model, input="first")
        with pytest.raises(openai.RateLimitError) as limited:
            api.embeddings.create(model=served_model, input="second")
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1 and float(headers["retry-after-ms"]) > 0
    assert limited.value.body is not None and "rate limit" in limited.value.message
