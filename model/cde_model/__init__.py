"""cde-serve package."""
