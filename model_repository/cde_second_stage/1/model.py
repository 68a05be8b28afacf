"""cde_second_stage: thin wrapper around cde_server.triton.handlers.second_stage."""

from typing import Any

import triton_python_backend_utils as pb_utils
from cde_server.triton.handlers.adapter import TritonAdapter, model_parameters, torch_device
from cde_server.triton.handlers.second_stage import SecondStageHandler


class TritonPythonModel:
    """Python-backend entry points; the work happens in the handler."""

    def initialize(self, args: dict[str, str]) -> None:
        handler = SecondStageHandler.from_parameters(model_parameters(args), torch_device(args))
        self.adapter = TritonAdapter(pb_utils, handler, args["model_name"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = self.adapter.execute(requests)
        return responses

    def finalize(self) -> None:
        self.adapter.close()
