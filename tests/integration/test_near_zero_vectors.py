"""Near-zero embeddings through a real gateway and Triton (issue 16, item 10): the demo model
embeds a text equal to its context's only document as float32 noise (raw norm ~1e-7), whose
direction depends on what else is in the batch; normalized, such a vector comes back as zeros."""

from __future__ import annotations

import numpy as np
from cde_client import CdeClient
from cde_server.domain.vectors import NEAR_ZERO_NORM
from cde_server.triton.launcher import TritonProcess
from support.gateway_fixtures import GatewayFactory

DOCUMENT = "the quick brown fox jumps over the lazy dog"
OTHERS = ["a different sentence about rivers", "and a third one about mountains and snow"]


def test_a_text_equal_to_the_only_context_document_is_zero_solo_and_in_a_batch(
    demo_triton_process: TritonProcess, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(triton_url=demo_triton_process.grpc_url)
    with CdeClient(gateway.address, retry=False, timeout=60) as client:
        client.create_context_set("one", [DOCUMENT])
        raw_solo = client.embed([DOCUMENT], context="one", normalize=False).embeddings
        raw_batch = client.embed([DOCUMENT, *OTHERS], context="one", normalize=False).embeddings
        assert np.linalg.norm(raw_solo[0]) < NEAR_ZERO_NORM
        assert np.linalg.norm(raw_batch[0]) < NEAR_ZERO_NORM
        solo = client.embed([DOCUMENT], context="one").embeddings
        batch = client.embed([DOCUMENT, *OTHERS], context="one").embeddings
    assert not solo[0].any() and not batch[0].any(), "noise was normalized into a direction"
    np.testing.assert_array_equal(solo[0], batch[0])
    np.testing.assert_allclose(np.linalg.norm(batch[1:], axis=1), 1.0, atol=1e-5)
