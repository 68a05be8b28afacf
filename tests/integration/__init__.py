"""Tests that run the whole stack through the HTTP API (and its adapters)."""
