"""The Gradio layer: app assembly, one tab module per method, shared widgets.

``components`` may import ``studio``; ``studio`` never imports gradio or ``components``.
"""

from components.app import build_app, launch

__all__ = ["build_app", "launch"]
