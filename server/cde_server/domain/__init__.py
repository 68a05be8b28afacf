"""The gateway's domain rules (no transport, no Triton): context sets, prompts, tenancy, names,
pagination. Runs in the gateway process; may import `stores`, `triton.protocol` and `errors`.
"""
