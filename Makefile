# cde-serve: `make run` serves the demo model; `make test` runs the test suite.
# Both create the virtual environment (.venv) and install the project when needed.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-fast lint proto bench bench-v2 bench-model bench-triton bench-gateway bench-http gpu-check-dry-run lint-deploy loadtest soak clean

$(STAMP): pyproject.toml setup.py $(wildcard proto/cde/v1/*.proto)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[server,loadtest,dev]'
	touch $(STAMP)

install: $(STAMP)

## Serve the offline demo model (MiniLM stand-in) with a SQLite store on localhost:50051.
run: install
	CDE_MODEL=$${CDE_MODEL:-demo} $(BIN)/cde serve

## Run the whole test suite (starts real tritonserver, gateways and redis-server processes).
test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest

## The unit tests alone (no processes): well under a minute.
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint

## Regenerate the cde.v1 Python code after editing proto/ (every install does it too).
proto:
	$(BIN)/python -m pip install -q --no-deps -e .

## Static checks of deploy/ (checkov + Kubernetes schemas, in their own .venv-deploy).
lint-deploy: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q tests/integration/test_deploy_static.py

bench-model: install
	HF_HUB_OFFLINE=1 $(BIN)/python loadtest/bench_model.py

bench-triton: install
	HF_HUB_OFFLINE=1 $(BIN)/python loadtest/bench_triton.py

bench-gateway: install
	HF_HUB_OFFLINE=1 $(BIN)/python loadtest/bench_gateway.py

## /v1/embeddings (float, base64) vs gRPC Embed on the demo model at c = 1/8/32; writes the
## "HTTP API" section of loadtest/RESULTS.md.
bench-http: install
	HF_HUB_OFFLINE=1 $(BIN)/python loadtest/bench_http.py

## One side-by-side run of every path (in-process, Triton, gateway + client), with a plot.
bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python loadtest/bench_all.py

## The same for a full-size cde-small-v2 checkpoint (random, written to .cache/ if missing).
bench-v2: install
	HF_HUB_OFFLINE=1 $(BIN)/python loadtest/bench_all.py --v2-checkpoint .cache/cde-v2-full

## The prepared GPU check on CPU (seconds); on a GPU host run: bash loadtest/gpu_check.sh
gpu-check-dry-run: install
	bash loadtest/gpu_check.sh --dry-run

## Locust, headless and bounded, against a local stack (demo model unless CDE_MODEL is set).
loadtest: install
	HF_HUB_OFFLINE=1 $(BIN)/python loadtest/run_loadtest.py

## 10 minutes of locust at saturation, sampling gateway and Triton RSS; records the "Soak"
## section of loadtest/RESULTS.md (not part of CI; run it on a quiet machine).
soak: install
	HF_HUB_OFFLINE=1 $(BIN)/python loadtest/soak.py --record

clean:
	rm -rf $(VENV) .venv-deploy build *.egg-info .pytest_cache .mypy_cache .ruff_cache client/cde/v1/*_pb2*
