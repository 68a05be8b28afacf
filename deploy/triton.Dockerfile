# syntax=docker/dockerfile:1.7
# Triton image for GPU hosts: NGC tritonserver 24.10 (Triton 2.51, the release nvidia-pytriton
# 0.7.0 bundles) with the CDE model repository and our model package.
#
# Build from the repository root (uses deploy/triton.Dockerfile.dockerignore with BuildKit):
#   docker build -f deploy/triton.Dockerfile -t cde-serve/triton:0.1.0 .
# To bake real weights into the image, put the checkpoint directory (config.json,
# model.safetensors) at deploy/models/cde-small-v1 before building and run with
# CDE_MODEL=/opt/cde/models/cde-small-v1; without it the image serves CDE_MODEL=demo.
#
# Why Python 3.11 next to the container's 3.10: the project needs Python >= 3.11, and the
# python backend stub embeds one libpython. The NGC stub is built for 3.10, so the image uses
# the 3.11 stub that nvidia-pytriton ships for this same Triton release (what `cde triton`
# does on a developer machine), with this venv's bin first on PATH so the stub's embedded
# Python imports torch and cde_model from it.

FROM nvcr.io/nvidia/tritonserver:24.10-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Python 3.11 with a shared libpython for Ubuntu 22.04 (the container's base) from deadsnakes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 \
    && apt-get purge -y software-properties-common gpg-agent \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/cde \
    PATH=/opt/cde/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.11 -m venv /opt/cde

# torch first, from the index whose CUDA build suits the host driver (the default PyPI wheel
# bundles its own CUDA runtime; see deploy/README.md).
ARG TORCH_REQUIREMENT="torch==2.13.0"
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install --index-url "$TORCH_INDEX_URL" "$TORCH_REQUIREMENT"

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY client ./client
COPY server ./server
COPY model ./model
RUN pip install ".[server]" \
    && python -c "import torch, cde_model, pytriton" \
    && rm -rf /src

# The 3.11 stub from nvidia-pytriton replaces the NGC 3.10 one. Its RPATH points into the wheel,
# so the wheel's bundled libraries (hash-suffixed names, no clashes) go on the library path.
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && stub_dir=/opt/tritonserver/backends/python \
    && mv "$stub_dir/triton_python_backend_stub" "$stub_dir/triton_python_backend_stub.py310" \
    && cp "$site/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" \
        "$stub_dir/triton_python_backend_stub" \
    && ln -s "$site/nvidia_pytriton.libs" /opt/cde/pytriton-libs
ENV LD_LIBRARY_PATH=${LD_LIBRARY_PATH}:/opt/cde/pytriton-libs

COPY model_repository /opt/cde/model_repository
COPY deploy/models /opt/cde/models

RUN groupadd --system --gid 10001 cde \
    && useradd --system --uid 10001 --gid cde --home-dir /home/cde --create-home \
        --shell /usr/sbin/nologin cde
ENV HOME=/home/cde \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CDE_MODEL=demo \
    CDE_DTYPE=float32 \
    CDE_CONTEXT_CACHE_BYTES=536870912
USER 10001:10001
WORKDIR /home/cde

# 8000 HTTP (health, /v2), 8001 gRPC (the gateway's CDE_TRITON_URL), 8002 Prometheus metrics.
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
# GPU instances come from each model's config.pbtxt; on a CPU-only host append
# --model-config-name=cpu --pinned-memory-pool-byte-size=0 --cuda-memory-pool-byte-size=0:0
# --allow-gpu-metrics=false. The NGC entrypoint (/opt/nvidia/nvidia_entrypoint.sh) stays.
CMD ["tritonserver", \
     "--model-repository=/opt/cde/model_repository", \
     "--disable-auto-complete-config", \
     "--strict-readiness=true", \
     "--exit-timeout-secs=30", \
     "--http-port=8000", \
     "--grpc-port=8001", \
     "--metrics-port=8002", \
     "--backend-config=python,shm-default-byte-size=4194304", \
     "--backend-config=python,shm-growth-byte-size=16777216", \
     "--log-verbose=0"]
