"""The gateway's tokenizer gives `cde_tokenize`'s ids, for every family, and stays out of the way
of other calls when a request is huge."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cde_model.description import describe_model
from cde_model.prompts import PROMPTS
from cde_model.tokenizer import TextTokenizer
from cde_server.inference import local_tokenizer
from cde_server.inference.local_tokenizer import LocalTokenizer
from cde_server.triton import protocol as tp
from cde_server.triton.handlers.model_info import ModelInfoHandler
from cde_server.triton.handlers.tokenize import TokenizeHandler
from support.paths import TINY_CHECKPOINT, V2_TINY_CHECKPOINT

TEXTS = [
    "",
    "hello",
    "Héllo, WORLD! naïve café — 東京 🙂",
    "tabs\tand\nnewlines  and   spaces",
    "word " * 600,  # cut at max_tokens
    "x" * 3000,  # one long word
    "a b c " * 85,  # near the limit
]
V2_PROMPTS = ["search_query: ", "search_document: ", "Given a question, find passages: "]
MODELS = {"v1": str(TINY_CHECKPOINT), "v2": str(V2_TINY_CHECKPOINT), "demo": "demo"}


def served(model_path: str) -> tuple[TokenizeHandler, LocalTokenizer]:
    """The stub's tokenizer and the gateway's copy, as cde_model_info hands it out."""
    parameters = {"model_path": model_path, "dtype": "float32", "device_kind": "cpu"}
    info = ModelInfoHandler.from_parameters(parameters)
    [answer] = info.run([{tp.REQUEST: np.array([tp.TOKENIZER_REQUEST], dtype=np.object_)}])
    assert isinstance(answer, dict)
    local = LocalTokenizer.from_info(answer[tp.INFO][0])
    assert local is not None
    return TokenizeHandler.from_parameters(parameters), local


def stub_rows(handler: TokenizeHandler, texts: list[str]) -> dict[str, Any]:
    [result] = handler.run([{tp.TEXT: tp.text_tensor(texts)}])
    assert isinstance(result, dict)
    return result


def assert_same(handler: TokenizeHandler, local: LocalTokenizer, texts: list[str]) -> None:
    expected = stub_rows(handler, texts)
    mine = local.encode(texts)
    width = int(mine.attention_mask.sum(axis=1).max())
    np.testing.assert_array_equal(mine.input_ids[:, :width], expected[tp.INPUT_IDS])
    np.testing.assert_array_equal(mine.attention_mask[:, :width], expected[tp.ATTENTION_MASK])
    np.testing.assert_array_equal(mine.token_counts, expected[tp.TOKEN_COUNT].reshape(-1))
    np.testing.assert_array_equal(mine.truncated, expected[tp.TRUNCATED].reshape(-1))


@pytest.mark.parametrize("family", list(MODELS))
def test_gateway_ids_are_the_stub_ids(family: str) -> None:
    handler, local = served(MODELS[family])
    prompts = V2_PROMPTS if family == "v2" else list(PROMPTS.values())
    texts = [prompt + text for prompt in ["", *prompts] for text in TEXTS]
    assert_same(handler, local, texts)
    for text in texts:  # alone (padding of batch-mates must not matter)
        assert_same(handler, local, [text])
    assert local.encode(["word " * 600]).truncated.all()
    assert int(local.encode(["word " * 600]).token_counts[0]) == local.max_tokens


def test_a_vocab_txt_tokenizer_travels_too(tmp_path: Path) -> None:
    shutil.copy(TINY_CHECKPOINT / "vocab.txt", tmp_path / "vocab.txt")
    stub, source = TextTokenizer.from_dir(tmp_path, 512)
    assert source.name == "vocab.txt"
    local = LocalTokenizer(stub.to_json(), 512, "f")
    texts = [PROMPTS["query"] + t for t in TEXTS]
    np.testing.assert_array_equal(local.encode(texts).input_ids, stub.encode(texts)[0])


def test_the_info_answer_is_unchanged_and_old_repositories_hand_out_nothing() -> None:
    handler = ModelInfoHandler.from_parameters(
        {"model_path": "demo", "dtype": "float32", "device_kind": "cpu"}
    )
    [plain] = handler.run([{tp.REQUEST: np.array([b"info"], dtype=np.object_)}])
    assert isinstance(plain, dict)
    assert LocalTokenizer.from_info(plain[tp.INFO][0]) is None  # what an old repository answers
    assert describe_model("demo").info.fingerprint in plain[tp.INFO][0].decode()


def test_slices_keep_order_and_budget() -> None:
    slices = local_tokenizer._slices([5, 5, 5, 20, 1, 1], 10)
    assert slices == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert local_tokenizer._slices([], 10) == []


def test_a_huge_request_lets_small_calls_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts of 64 KiB tokenize in worker-thread slices; the loop keeps serving others."""
    _, local = served("demo")
    words = [f"w{i % 997}x" for i in range(16000)]
    huge = [" ".join(words)[: 64 * 1024] for _ in range(48)]
    monkeypatch.setattr(local_tokenizer, "SLICE_CHARS", 2 * 64 * 1024)

    async def scenario() -> tuple[int, float, bool]:
        big = asyncio.create_task(local.tokenize(huge))
        await asyncio.sleep(0)
        small_done = 0
        worst = 0.0
        while not big.done() and small_done < 50:
            started = time.perf_counter()
            encoded = await local.tokenize(["search_query: a short one"])
            worst = max(worst, time.perf_counter() - started)
            assert encoded.rows == 1
            small_done += 1
            await asyncio.sleep(0.001)
        finished_first = not big.done()
        result = await big
        assert result.rows == len(huge) and result.truncated.all()
        return small_done, worst, finished_first

    small_done, worst, finished_first = asyncio.run(scenario())
    assert finished_first, "the small calls waited for the huge one"
    assert small_done == 50
    assert worst < 1.0, f"a small call took {worst:.2f} s behind the huge one"


def test_the_endpoint_fetches_once_and_again_for_another_model() -> None:
    """TritonEndpoint asks cde_model_info for the tokenizer once, again only after the served
    fingerprint changed; an answer without a tokenizer (older repository) means Triton-side."""
    from cde_server.inference.deadlines import Deadline
    from cde_server.inference.triton_endpoint import TritonEndpoint

    description = describe_model("demo")
    info = json.loads(
        ModelInfoHandler.from_parameters(
            {"model_path": "demo", "dtype": "float32", "device_kind": "cpu"}
        ).info[0]
    )
    served = {"fingerprint": "a", "hand_out": True}
    asked: list[bytes] = []

    async def answer(request: bytes, deadline: Deadline) -> bytes:
        asked.append(request)
        if request == tp.TOKENIZER_REQUEST and served["hand_out"]:
            return json.dumps(
                {
                    "fingerprint": served["fingerprint"],
                    "max_tokens": description.info.max_tokens,
                    tp.TOKENIZER_FIELD: description.tokenizer.to_json(),
                }
            ).encode()
        return json.dumps({**info, "fingerprint": served["fingerprint"]}).encode()

    async def scenario() -> None:
        endpoint = TritonEndpoint("127.0.0.1:1")
        endpoint._model_info_answer = answer  # type: ignore[method-assign]
        deadline = Deadline.within(None, 5.0)
        try:
            first = await endpoint._local_tokenizer(deadline)
            assert first is not None and first.fingerprint == "a"
            assert await endpoint._local_tokenizer(deadline) is first
            await endpoint.model_info()  # same model: kept
            assert await endpoint._local_tokenizer(deadline) is first
            served.update(fingerprint="b", hand_out=False)
            await endpoint.model_info()  # another model, from an older repository
            assert await endpoint._local_tokenizer(deadline) is None
            assert asked.count(tp.TOKENIZER_REQUEST) == 2
        finally:
            await endpoint.close()

    asyncio.run(scenario())


def test_an_unusable_tokenizer_means_triton_side(caplog: pytest.LogCaptureFixture) -> None:
    from cde_server.inference.triton_endpoint import TritonEndpoint

    async def scenario() -> None:
        endpoint = TritonEndpoint("127.0.0.1:1")
        try:
            bad = json.dumps({"fingerprint": "f", "max_tokens": 8, tp.TOKENIZER_FIELD: "{}"})
            assert endpoint._tokenizer_of(bad.encode()) is None
        finally:
            await endpoint.close()

    asyncio.run(scenario())
    assert "unusable tokenizer" in caplog.text
