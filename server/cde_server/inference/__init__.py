"""The gateway's client of Triton: one endpoint (direct and ensemble paths, the cache-miss
protocol), the endpoint pool and the served model. Runs in the gateway process (no torch); may
import `triton.protocol` and `errors`.
"""
