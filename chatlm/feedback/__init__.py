"""Stored rows -> training records in TRL's formats (pure functions), and their JSONL export."""
