"""The package layout: the `cde` entry point and the generated API modules."""

from __future__ import annotations

import subprocess
import sys


def test_cde_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cde_server.cli.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: cde" in result.stdout


def test_generated_api_importable() -> None:
    from cde.v1 import embedding_service_pb2 as pb
    from cde.v1 import embedding_service_pb2_grpc as pb_grpc

    assert pb.EmbedRequest(texts=["a"]).texts == ["a"]
    assert hasattr(pb_grpc, "EmbeddingServiceStub")
