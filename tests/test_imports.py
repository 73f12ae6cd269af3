"""Dependency direction: the engine never imports gradio or components; importing does no work."""

from __future__ import annotations

import subprocess
import sys


def engine_modules() -> list[str]:
    """Every module of the ``studio`` package (walked, so a new module is checked without editing this test)."""
    import pkgutil

    import studio

    return ["studio", *sorted(m.name for m in pkgutil.walk_packages(studio.__path__, "studio."))]


def test_engine_imports_without_gradio_and_without_loading_anything():
    code = (
        "import sys, threading\n"
        f"for m in {engine_modules()!r}: __import__(m)\n"
        "bad = [m for m in sys.modules if m == 'gradio' or m.startswith(('gradio.', 'components'))]\n"
        "assert not bad, bad\n"
        "assert 'sentence_transformers' not in sys.modules, 'text encoder imported at import time'\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "import studio.core.manager as mm; assert mm._DEFAULT is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_the_app_builds_its_page_without_torch_or_diffusers():
    """Importing torch and diffusers costs seconds on a small CPU; the page is built from the methods'
    ``Params`` without them (issue 29: serve first), and the warm-up imports them after launch. The
    manager is the one ``studio launch`` makes (device not given: choosing one needs torch)."""
    code = ("import sys\nimport components, studio.methods\n"
            "from studio.core.manager import default_manager\n"
            "from studio.core.adapters import register_saved\n"
            "m = default_manager(); register_saved(m); components.build_app(m)\n"
            "early = [n for n in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate', 'scipy') if n in sys.modules]\n"
            "assert not early, f'building the app imported {early}'\n"
            "from components.warm import ensure_warm\nensure_warm()\n"
            "assert {'torch', 'diffusers.models'} <= set(sys.modules), 'the warm-up imports them'\n"
            "assert str(m.device) in ('cpu', 'cuda', 'mps')\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
