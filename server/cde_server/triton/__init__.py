"""Everything about Triton Inference Server that is not the gateway's client of it.

- `launcher`, `environment`, `settings`: start a local tritonserver (the `cde serve` / `cde
  triton` process).
- `protocol`: tensor names and encodings shared by the gateway and the stub handlers (numpy
  only, imported by both sides).
- `handlers/`: code that runs inside Triton's python-backend stub (torch, `cde_model`).
"""
