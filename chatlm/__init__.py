"""chatlm: a self-hosted chat app whose ratings become its next LoRA adapter."""

__version__ = "0.1.0"
