"""cde_second_stage: Triton's python-backend entry points around `SecondStageHandler`."""

from cde_server.triton.handlers.adapter import PythonBackendModel
from cde_server.triton.handlers.second_stage import SecondStageHandler


class TritonPythonModel(PythonBackendModel):
    """Builds a `SecondStageHandler` in initialize() and hands it each batch."""

    handler_class = SecondStageHandler
