"""cde_tokenize: Triton's python-backend entry points around `TokenizeHandler`."""

from cde_server.triton.handlers.adapter import PythonBackendModel
from cde_server.triton.handlers.tokenize import TokenizeHandler


class TritonPythonModel(PythonBackendModel):
    """Builds a `TokenizeHandler` in initialize() and hands it each batch."""

    handler_class = TokenizeHandler
