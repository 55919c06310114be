"""Benchmarks run through the app's own code paths (``python -m chatlm eval ...``)."""
