"""Gradio Blocks UI; handlers are thin adapters over chatlm.chat.turns."""
