"""The gateway process (grpc.aio, no torch): transport, auth, limits, metrics, logs, settings.

May import `domain`, `inference`, `stores`, `triton.protocol` and `errors`; never `cli`, the
launcher or the stub handlers.
"""
