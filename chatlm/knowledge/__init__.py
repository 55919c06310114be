"""Answering questions against a loaded knowledge text: parse, chunk, embed, index, score.

The modules are pure (no database); the store keeps chunk texts and embeddings and rebuilds a
:class:`chatlm.knowledge.index.HybridIndex` from them. Only ``embed`` touches torch, lazily.
"""
