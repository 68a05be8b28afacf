"""The gateway's HTTP API: OpenAI-compatible `/v1/embeddings` and `/v1/models`, REST for the
native operations, health probes, and the OpenAPI document (`/openapi.json`, `/docs`).

A sibling of `gateway.grpc_service` over the same `EmbeddingService` and `CallScopes`: one
implementation of every operation, the same auth, tenants, limits, metrics and logs. FastAPI
serves it; uvicorn runs it on the gateway's event loop (`server.HttpListener`).
"""
