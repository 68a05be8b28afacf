"""cde_model_info: Triton's python-backend entry points around `ModelInfoHandler`."""

from cde_server.triton.handlers.adapter import PythonBackendModel
from cde_server.triton.handlers.model_info import ModelInfoHandler


class TritonPythonModel(PythonBackendModel):
    """Builds a `ModelInfoHandler` in initialize() and hands it each batch."""

    handler_class = ModelInfoHandler
