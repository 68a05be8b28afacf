"""cde_first_stage: Triton's python-backend entry points around `FirstStageHandler`."""

import os
import sys

# The stub's embedded Python ignores PYTHONPATH: honour it, so a source checkout on it wins over
# an installed copy of cde-serve (as it does in the launcher's own process).
sys.path[:0] = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]

from cde_server.triton.handlers.adapter import PythonBackendModel  # noqa: E402
from cde_server.triton.handlers.first_stage import FirstStageHandler  # noqa: E402


class TritonPythonModel(PythonBackendModel):
    """Builds a `FirstStageHandler` in initialize() and hands it each batch."""

    handler_class = FirstStageHandler
