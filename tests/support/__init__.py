"""Fixtures and helpers shared by the test folders (registered in tests/conftest.py)."""
