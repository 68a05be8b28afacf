"""cde_first_stage: Triton's python-backend entry points around `FirstStageHandler`."""

from cde_server.triton.handlers.adapter import PythonBackendModel
from cde_server.triton.handlers.first_stage import FirstStageHandler


class TritonPythonModel(PythonBackendModel):
    """Builds a `FirstStageHandler` in initialize() and hands it each batch."""

    handler_class = FirstStageHandler
