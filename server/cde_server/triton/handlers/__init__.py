"""What runs inside Triton's python backend: one batch handler per model of model_repository/.

The `model.py` files stay thin: they build a handler in initialize() and hand each batch of
requests to `adapter.TritonAdapter`, which converts tensors, isolates per-request errors and
never lets an exception escape execute(). The handlers here know nothing of Triton's types, so
tests can drive them with plain numpy arrays.
"""
