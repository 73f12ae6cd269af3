"""Diffusion Studio engine: importable, no Gradio inside. Importing it does no work."""

__version__ = "0.1.0"
