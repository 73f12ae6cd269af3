"""App assembly: one tab per working method plus the Models panel, and an offline launch."""

from __future__ import annotations

import importlib
import logging
import os
import threading

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import gradio as gr

from studio.core.manager import ModelManager, default_manager
from studio.methods import METHODS
from components.jobs import build_job_banner
from components.models_tab import build_models_tab
from components.warm import ensure_warm

HEADER = """\
# Diffusion Studio
An interactive workbench for diffusion methods. Everything runs on small embedded models that ship
with the studio, on this machine's CPU: nothing is downloaded. Every image is a PNG that carries
the parameters that made it, and every forecast CSV its parameters in its header.
"""
log = logging.getLogger(__name__)
MAX_FILE_SIZE = "10mb"  # uploads (drawn digits, CSVs) are small
CACHE_CLEANUP = (3600, 3600)  # every hour, delete served files older than an hour
# System fonts only: the default theme would fetch Google fonts, and the studio runs offline.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def tab_builder(dotted: str):
    """The function named ``"components.<module>.<function>"`` (a registry entry's ``tab``)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_app(manager: ModelManager | None = None) -> gr.Blocks:
    """The studio's Blocks: one tab per registered method (:data:`studio.methods.METHODS`), in
    registry order, then the Models panel. No model is loaded here; they load on first use."""
    if manager is None:
        from studio.core.adapters import register_saved

        manager = default_manager()
        register_saved(manager)  # tuned models saved in earlier sessions
    with gr.Blocks(title="Diffusion Studio", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as demo:
        # The queue first: queue() rebuilds the server app (routes and the page's config) for what the Blocks
        # holds when it is called, which here is nothing yet; after the tabs it would be a third full build.
        demo.queue(max_size=64)
        gr.Markdown(HEADER)
        build_job_banner(manager)
        with gr.Tabs():
            for method in METHODS:
                with gr.Tab(method.title, id=method.id) as tab:
                    parts = tab_builder(method.tab)(manager)
                refresh_models_on_select(tab, method, parts or {}, manager)
            with gr.Tab("Models", id="models") as models_tab:
                build_models_tab(manager, models_tab)
    return demo


def refresh_models_on_select(tab: gr.Tab, method, parts: dict, manager: ModelManager) -> None:
    """When ``tab`` is opened, its model dropdowns (``model`` / ``*_model``) list what the manager holds now:
    a model registered after the page was built (Train's Register, Tune's tuned model) appears without a reload."""
    dropdowns = [c for k, c in parts.items() if isinstance(c, gr.Dropdown) and (k == "model" or k.endswith("_model"))]
    if not dropdowns:
        return

    def choices():
        keys = method.models(manager)
        return [gr.update(choices=keys)] * len(dropdowns) if len(dropdowns) > 1 else gr.update(choices=keys)

    tab.select(choices, outputs=dropdowns, queue=False, api_visibility="private", show_progress="hidden")


def launch(manager: ModelManager | None = None, **kw) -> gr.Blocks:
    """Build and launch offline; host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
    (default 127.0.0.1:7860); ``kw`` goes to ``Blocks.launch`` and wins over the defaults.
    Returns the Blocks once the server stops (at once with ``prevent_thread_lock=True``)."""
    demo = build_app(manager)
    options = {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        "share": False,
        "ssr_mode": False,
        "max_file_size": MAX_FILE_SIZE,
        "theme": THEME,
        **kw,
    }
    block = not options.pop("prevent_thread_lock", False)
    demo.launch(prevent_thread_lock=True, **options)
    threading.Thread(target=warm_up, name="studio-warm-up", daemon=True).start()
    if block:
        demo.block_thread()
    return demo


def warm_up() -> None:
    """Import the engine's heavy half (torch and diffusers: seconds on a small CPU) once the page is up;
    requests that come meanwhile wait for it with a notice (:func:`ensure_warm`)."""
    ensure_warm()


def start_studio_process(port: int):
    """`studio launch` in a fresh process on 127.0.0.1:``port`` (for tests and benchmarks);
    returns the process (``subprocess.Popen``) and the page URL. Its output is discarded."""
    import subprocess
    import sys

    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "launch"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}/"


def wait_until_up(url: str, proc=None, timeout: float = 120.0) -> float:
    """Poll ``url`` until it answers HTTP 200; returns the seconds waited. Raises RuntimeError
    when ``proc`` exits first or ``timeout`` passes."""
    import time
    import urllib.request

    t0 = time.perf_counter()
    while True:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        if (proc is not None and proc.poll() is not None) or time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"the studio did not answer at {url} within {timeout:.0f} s")
        time.sleep(0.05)
