"""cde_model_info: thin wrapper around cde_server.triton.handlers.model_info."""

from typing import Any

import triton_python_backend_utils as pb_utils
from cde_server.triton.handlers.adapter import TritonAdapter, model_parameters
from cde_server.triton.handlers.model_info import ModelInfoHandler


class TritonPythonModel:
    """Python-backend entry points; the work happens in the handler."""

    def initialize(self, args: dict[str, str]) -> None:
        handler = ModelInfoHandler.from_parameters(model_parameters(args))
        self.adapter = TritonAdapter(pb_utils, handler, args["model_name"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = self.adapter.execute(requests)
        return responses

    def finalize(self) -> None:
        self.adapter.close()
