# syntax=docker/dockerfile:1.7
# Gateway image: `cde serve` (gRPC API, context sets, prompts, metrics) in front of an external
# Triton (CDE_TRITON_URL) and a shared store (CDE_STORE).
#
# Build from the repository root (uses deploy/gateway.Dockerfile.dockerignore with BuildKit):
#   docker build -f deploy/gateway.Dockerfile -t cde-serve/gateway:0.1.0 .
#
# The `gateway` extra of pyproject.toml holds what the gateway process imports: no torch, no
# nvidia-pytriton (the model runs in the Triton image). CDE_TRITON_URL must be set.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/cde/bin:$PATH
RUN python -m venv /opt/cde
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY client ./client
COPY server ./server
COPY model ./model
ARG PROJECT_EXTRAS=gateway
# A plain (non-editable) install: setup.py generates the cde.v1 gRPC modules while building.
RUN pip install ".[${PROJECT_EXTRAS}]" \
    && python -c "import cde.v1.embedding_service_pb2_grpc, cde_server.cli.main, grpc_health.v1.health_pb2"

# Same base as the build stage: the venv's interpreter links to it.
FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 cde \
    && useradd --system --uid 10001 --gid cde --home-dir /home/cde --create-home \
        --shell /usr/sbin/nologin cde \
    && install -d -o cde -g cde -m 0750 /var/lib/cde
COPY --from=build /opt/cde /opt/cde
COPY --chmod=0755 deploy/grpc_health_check.py /opt/cde/bin/cde-grpc-health-check
ENV PATH=/opt/cde/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    CDE_HOST=0.0.0.0 \
    CDE_PORT=50051 \
    CDE_METRICS_PORT=9464 \
    CDE_STORE=sqlite:////var/lib/cde/cde.db
USER 10001:10001
WORKDIR /home/cde
# 50051: gRPC API (cde.v1, health, reflection); 9464: Prometheus /metrics.
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["cde-grpc-health-check"]
ENTRYPOINT ["cde", "serve"]
