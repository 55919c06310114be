"""HTTP APIs served next to the UI."""
