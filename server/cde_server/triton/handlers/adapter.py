"""Glue between Triton's python backend and the batch handlers.

`TritonAdapter.execute()` reads each request's inputs into numpy arrays, gives the whole batch
to the handler at once, and answers every request with its outputs or its own error. It never
raises: an exception escaping execute() would fail every request of the batch.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from cde_server.triton.handlers.heap import HeapTrimmer

if TYPE_CHECKING:
    from cde_model import EmbeddingModel

Array = npt.NDArray[Any]

logger = logging.getLogger("cde_server.triton.handlers")

ErrorCode = Literal["INVALID_ARG", "NOT_FOUND", "INTERNAL", "UNAVAILABLE", "CANCELLED"]
Inputs = dict[str, Array]
Outputs = dict[str, Array]


class RequestError(Exception):
    """One request's failure, answered with Triton status `code` (INVALID_ARG by default)."""

    def __init__(self, message: str, code: ErrorCode = "INVALID_ARG") -> None:
        super().__init__(message)
        self.message = message
        self.code: ErrorCode = code


Result = Outputs | RequestError


class BatchHandler(Protocol):
    """The work of one model: a batch of requests' inputs in, one result per request out."""

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """Inputs every request must carry."""
        ...

    @property
    def optional_inputs(self) -> tuple[str, ...]:
        """Inputs read when present."""
        ...

    def run(self, batch: Sequence[Inputs]) -> list[Result]:
        """One result per entry of `batch`, in order; must not raise for bad inputs."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


M = TypeVar("M")

_PLACEHOLDER = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_parameter(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace `${VAR}` and `${VAR:-default}` with environment values (KeyError when unset)."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise KeyError(
            f"environment variable {name} is not set (needed by model parameter {value!r})"
        )

    return _PLACEHOLDER.sub(substitute, value)


def model_parameters(
    args: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The `parameters` of the model's config, with environment placeholders expanded."""
    config = json.loads(args["model_config"])
    raw: dict[str, dict[str, str]] = config.get("parameters", {})
    return {key: expand_parameter(value["string_value"], environ) for key, value in raw.items()}


def torch_device(args: Mapping[str, str]) -> str:
    """torch device of this instance: "cuda:<id>" for KIND_GPU, else "cpu"."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cpu"


def load_stage_model(parameters: Mapping[str, str], device: str) -> EmbeddingModel:
    """cde_model.load_model with the model_path, dtype and token_budget (0: default) parameters."""
    from cde_model import load_model

    budget = int(parameters.get("token_budget", "0"))
    return load_model(
        parameters["model_path"],
        dtype=parameters["dtype"],
        device=device,
        token_budget=budget if budget > 0 else None,
    )


def free_accelerator_memory() -> None:
    """Collect dropped tensors and return cached GPU memory (after a model is deleted)."""
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def batch_then_isolate(
    handler_name: str, members: Sequence[M], run: Callable[[list[M]], None]
) -> list[tuple[M, RequestError]]:
    """`run(members)` as one model call; if it fails, once per member, so that only the
    members whose own call fails get an error (returned with it)."""
    try:
        run(list(members))
        return []
    except Exception as exc:
        if len(members) == 1:
            return [(members[0], run_isolated(handler_name, exc))]
    failed = []
    for member in members:
        try:
            run([member])
        except Exception as exc:
            failed.append((member, run_isolated(handler_name, exc)))
    return failed


def run_isolated(handler_name: str, exc: BaseException) -> RequestError:
    """The RequestError reported for an unexpected exception (logged with its traceback)."""
    logger.error("%s failed: %s", handler_name, exc, exc_info=exc)
    if isinstance(exc, RequestError):
        return exc
    return RequestError(f"{handler_name} failed: {type(exc).__name__}: {exc}", "INTERNAL")


class HandlerFactory(Protocol):
    """A handler class: built from its model's config parameters and instance device."""

    def from_parameters(self, parameters: Mapping[str, str], device: str) -> BatchHandler:
        """Load what the handler needs."""
        ...


class PythonBackendModel:
    """The python backend's entry points around one handler; each `model.py` subclasses it as
    `TritonPythonModel` and names its `handler_class`."""

    handler_class: ClassVar[HandlerFactory]

    def initialize(self, args: dict[str, str]) -> None:
        """Build the handler from the model's config (Triton calls this once per instance)."""
        import triton_python_backend_utils as pb_utils

        handler = self.handler_class.from_parameters(model_parameters(args), torch_device(args))
        self.adapter = TritonAdapter(pb_utils, handler, args["model_name"])

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request."""
        return self.adapter.execute(requests)

    def finalize(self) -> None:
        """Release the handler."""
        self.adapter.close()


class TritonAdapter:
    """Runs a BatchHandler on python-backend requests (`pb_utils` is the backend's module)."""

    def __init__(self, pb_utils: Any, handler: BatchHandler, model_name: str) -> None:
        self.pb_utils = pb_utils
        self.handler = handler
        self.model_name = model_name
        self.heap = HeapTrimmer()

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """One response per request, in order."""
        results: list[Result | None] = [None] * len(requests)
        batch: list[Inputs] = []
        positions: list[int] = []
        for position, request in enumerate(requests):
            try:
                batch.append(self._read_inputs(request))
                positions.append(position)
            except RequestError as exc:
                results[position] = exc
            except Exception as exc:
                results[position] = run_isolated(self.model_name, exc)
        if batch:
            try:
                handled = self.handler.run(batch)
                if len(handled) != len(batch):
                    raise RuntimeError(f"handler returned {len(handled)} results for {len(batch)}")
            except Exception as exc:
                handled = [run_isolated(self.model_name, exc)] * len(batch)
            for position, result in zip(positions, handled, strict=True):
                results[position] = result
        responses = [self._response(result) for result in results]
        self.heap.after_batch()
        return responses

    def _read_inputs(self, request: Any) -> Inputs:
        # Triton's dynamic batcher drops requests cancelled while queued (they count as failures,
        # never computed); this catches those cancelled after their batch was formed.
        if request.is_cancelled():
            raise RequestError("request cancelled by the client", "CANCELLED")
        inputs: Inputs = {}
        for name in self.handler.required_inputs:
            tensor = self.pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"missing input {name}")
            inputs[name] = tensor.as_numpy()
        for name in self.handler.optional_inputs:
            tensor = self.pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        return inputs

    def _response(self, result: Result | None) -> Any:
        pb = self.pb_utils
        if result is None:
            result = RequestError("no result produced", "INTERNAL")
        if isinstance(result, RequestError):
            code = getattr(pb.TritonError, result.code, pb.TritonError.INTERNAL)
            return pb.InferenceResponse(error=pb.TritonError(result.message, code))
        tensors = [pb.Tensor(name, np.ascontiguousarray(array)) for name, array in result.items()]
        return pb.InferenceResponse(output_tensors=tensors)

    def close(self) -> None:
        """Release the handler's model."""
        self.handler.close()
