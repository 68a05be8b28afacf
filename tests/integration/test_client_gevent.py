"""The sync client works under gevent (as in locust) after grpc's gevent integration."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from cde_client import CdeClient

if TYPE_CHECKING:
    from support.gateway_fixtures import GatewayThread

USERS = 8

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()

    import sys

    import gevent
    import numpy as np

    from cde_client import CdeClient

    address, output, users = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = CdeClient(address)

    def user(index):
        texts = [f"user {index} query {j}" for j in range(3)]
        single = client.embed(texts, prompt="query").embeddings
        stream = client.embed_stream([texts[:1], texts[1:]], prompt="query")
        streamed = [result.embeddings for result in stream]
        return np.concatenate([single, *streamed])

    jobs = [gevent.spawn(user, index) for index in range(users)]
    gevent.joinall(jobs, timeout=120, raise_error=True)
    client.close()
    np.save(output, np.stack([job.value for job in jobs]))
    """
)


def test_sync_client_under_gevent(gateway: GatewayThread, tmp_path: Path) -> None:
    output = tmp_path / "gevent.npy"
    subprocess.run(
        [sys.executable, "-c", SCRIPT, gateway.address, str(output), str(USERS)],
        check=True,
        timeout=180,
    )
    from_gevent = np.load(output)
    assert from_gevent.shape == (USERS, 6, 64)
    with CdeClient(gateway.address) as client:
        for index in range(USERS):
            texts = [f"user {index} query {j}" for j in range(3)]
            expected = client.embed(texts, prompt="query").embeddings
            np.testing.assert_allclose(from_gevent[index, :3], expected, atol=1e-5)
            np.testing.assert_allclose(from_gevent[index, 3:], expected, atol=1e-5)
