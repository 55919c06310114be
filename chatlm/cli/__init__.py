"""``python -m chatlm ...``: the command line, one module per command group (entry points only)."""
