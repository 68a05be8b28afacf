"""cde-small-v2 through the stack: the same Triton models serving the tiny v2 checkpoint (a
snapshot without tokenizer files plus CDE_TOKENIZER), a gateway and the client in front of it.

golden.json is reproduced through Triton (cde_context, cde_embed) and through the gateway
(context sets, built-in prompts, a custom empty prompt for the raw texts); GetModelInfo reports
the family; a context set built by a v1 server is FAILED_PRECONDITION on a v2 one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_client import CdeClient
from cde_client.errors import FailedPrecondition
from cde_model.description import describe_model
from cde_server.triton import protocol as tp
from cde_server.triton.launcher import TritonProcess
from support.gateway_fixtures import GatewayFactory, GatewayThread
from support.paths import V2_TINY_CHECKPOINT
from support.v2_golden import (
    CONTEXT_CASES,
    EMBED_CASES,
    GOLDEN,
    ContextCase,
    EmbedCase,
    assert_matches_golden,
    check_every_key_used,
)
from tritonclient.utils import InferenceServerException

Array = npt.NDArray[Any]
RAW_PROMPT = "raw"  # a custom prompt with no text: golden's raw_texts carry no prefix
DATASET_OF = {case.texts_key: case.embeddings_key for case in CONTEXT_CASES}


# --- Triton -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def triton(v2_triton_process: TritonProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(v2_triton_process.grpc_url) as client:
        yield client


def bytes_input(name: str, values: Array) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), "BYTES")
    tensor.set_data_from_numpy(values)
    return tensor


def context_embeddings(client: grpcclient.InferenceServerClient, texts: Sequence[str]) -> Array:
    """cde_context (stage 1) of `texts` with the document prefix."""
    prefixed = [GOLDEN["document_prefix"] + text for text in texts]
    result = client.infer(tp.CONTEXT_ENSEMBLE, [bytes_input(tp.TEXT, tp.text_tensor(prefixed))])
    return np.asarray(result.as_numpy(tp.DATASET_EMBEDDING))


def embed(client: grpcclient.InferenceServerClient, texts: Sequence[str], dataset: Array) -> Array:
    """cde_embed (stage 2) of `texts`; a context-cache miss is answered with the embeddings."""
    context = tp.context_id(dataset)
    inputs = [
        bytes_input(tp.TEXT, tp.text_tensor(texts)),
        bytes_input(tp.CONTEXT_ID, tp.context_id_tensor(context, len(texts))),
    ]
    try:
        result = client.infer(tp.EMBED_ENSEMBLE, inputs)
    except InferenceServerException as exc:
        if not tp.is_context_not_cached(exc.message() or ""):
            raise
        matrix = np.ascontiguousarray(tp.dataset_embeddings_tensor(dataset, len(texts)))
        attached = grpcclient.InferInput(tp.DATASET_EMBEDDINGS, list(matrix.shape), "FP32")
        attached.set_data_from_numpy(matrix)
        result = client.infer(tp.EMBED_ENSEMBLE, [*inputs, attached])
    return np.asarray(result.as_numpy(tp.EMBEDDING))


def test_golden_keys_are_all_covered() -> None:
    check_every_key_used()


def model_info(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    """The INFO JSON object of cde_model_info."""
    request = grpcclient.InferInput(tp.REQUEST, [1], "BYTES")
    request.set_data_from_numpy(np.array([b"info"], dtype=np.object_))
    info = client.infer(tp.MODEL_INFO_MODEL, [request]).as_numpy(tp.INFO)
    assert info is not None
    loaded: dict[str, Any] = json.loads(info.reshape(-1)[0])
    return loaded


def test_triton_reports_family_v2(triton: grpcclient.InferenceServerClient) -> None:
    info = model_info(triton)
    assert info["family"] == "v2"
    # the same fingerprint as the fixture with its tokenizer: CDE_TOKENIZER reached the stubs
    assert info["fingerprint"] == describe_model(str(V2_TINY_CHECKPOINT)).info.fingerprint
    assert (info["corpus_size"], info["max_tokens"]) == (16, GOLDEN["max_length"])


def test_triton_tokenizer_gives_the_instruction_end_id(
    triton: grpcclient.InferenceServerClient,
) -> None:
    result = triton.infer(tp.TOKENIZE_MODEL, [bytes_input(tp.TEXT, tp.text_tensor([": "]))])
    input_ids = np.asarray(result.as_numpy(tp.INPUT_IDS))
    assert int(input_ids[0, 1]) == GOLDEN["pool_instruction_end_id"]  # the token after [CLS]


@pytest.mark.parametrize("case", CONTEXT_CASES, ids=lambda case: case.embeddings_key)
def test_triton_context_reproduces_golden(
    triton: grpcclient.InferenceServerClient, case: ContextCase
) -> None:
    dataset = context_embeddings(triton, GOLDEN[case.texts_key])
    assert_matches_golden(dataset, case.embeddings_key, "Triton cde_context")


@pytest.mark.parametrize("case", EMBED_CASES, ids=lambda case: case.embeddings_key)
def test_triton_embed_reproduces_golden(
    triton: grpcclient.InferenceServerClient, case: EmbedCase
) -> None:
    dataset = np.asarray(GOLDEN[DATASET_OF[case.context_key]], dtype=np.float32)
    texts = [case.prefix + text for text in GOLDEN[case.texts_key]]
    embedded = embed(triton, texts, dataset)
    assert_matches_golden(embedded, case.embeddings_key, "Triton cde_embed")


# --- gateway and client -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def v2_client(v2_gateway: GatewayThread) -> Iterator[CdeClient]:
    """A client on the v2 gateway, with one context set per golden context and the raw prompt."""
    with CdeClient(v2_gateway.address) as client:
        for case in CONTEXT_CASES:
            client.create_context_set(case.texts_key, GOLDEN[case.texts_key], replace=True)
        client.put_prompt(RAW_PROMPT, "")
        yield client


def test_gateway_reports_family_v2(v2_client: CdeClient, v2_gateway: GatewayThread) -> None:
    info = v2_client.model_info()
    assert info.family == "v2"
    assert info.fingerprint == describe_model(str(V2_TINY_CHECKPOINT)).info.fingerprint
    assert (info.context_size, info.max_tokens) == (16, GOLDEN["max_length"])
    with v2_gateway.channel() as channel:
        response = pb_grpc.EmbeddingServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert response.family == "v2"


def test_gateway_prompts_are_the_golden_prefixes(v2_client: CdeClient) -> None:
    prompts = {prompt.name: prompt.text for prompt in v2_client.list_prompts()}
    assert prompts["query"] == GOLDEN["query_prefix"]
    assert prompts["document"] == GOLDEN["document_prefix"]


@pytest.mark.parametrize("case", CONTEXT_CASES, ids=lambda case: case.embeddings_key)
def test_gateway_context_set_reproduces_golden(v2_client: CdeClient, case: ContextCase) -> None:
    context_set = v2_client.get_context_set(case.texts_key, include_embeddings=True)
    assert context_set.sampling == "exact"  # 16 documents for N = 16: kept in their order
    assert context_set.dataset_embeddings is not None
    assert_matches_golden(context_set.dataset_embeddings, case.embeddings_key, "gateway")


@pytest.mark.parametrize("case", EMBED_CASES, ids=lambda case: case.embeddings_key)
def test_gateway_embed_reproduces_golden(v2_client: CdeClient, case: EmbedCase) -> None:
    result = v2_client.embed(
        GOLDEN[case.texts_key],
        prompt=case.prompt or RAW_PROMPT,
        context=case.context_key,
        normalize=False,
    )
    assert_matches_golden(result.embeddings, case.embeddings_key, "gateway")


def test_v1_gateway_reports_family_v1(gateway_factory: GatewayFactory) -> None:
    with CdeClient(gateway_factory().address) as client:
        assert client.model_info().family == "v1"


def test_v1_context_set_on_v2_server_is_failed_precondition(
    store_url: str, gateway_factory: GatewayFactory, v2_triton_process: TritonProcess
) -> None:
    v1 = gateway_factory(store_url)
    v2 = gateway_factory(store_url, triton_url=v2_triton_process.grpc_url)
    with CdeClient(v1.address) as v1_client, CdeClient(v2.address) as v2_client:
        created = v1_client.create_context_set("made-by-v1", GOLDEN["context_texts"])
        assert v1_client.embed(["x"], context="made-by-v1").embeddings.shape == (1, 64)
        shown = v2_client.get_context_set("made-by-v1")
        assert not shown.compatible and shown.model_fingerprint == created.model_fingerprint
        with pytest.raises(FailedPrecondition, match="rebuild it with replace"):
            v2_client.embed(["x"], context="made-by-v1")
    with v2.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.EmbeddingServiceStub(channel).Embed(
            pb.EmbedRequest(texts=["x"], context_set="made-by-v1")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
