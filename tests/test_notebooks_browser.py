"""`make notebooks` in a real browser: JupyterLab from the project's environment, a tiny notebook run with the
project's kernel, and an ipywidgets slider and a plotly figure rendered in the page.

Uses the Debian chromium (CI installs it); never ``playwright install``. The server is started the way
``make notebooks`` starts it (``python -m jupyterlab`` from the interpreter running the tests, no browser, no
announcements, no update checks), on a free local port with a token, in a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TIMEOUT_MS = 90_000  # JupyterLab's first page load takes 10-40 s on 2 busy cores
START_TIMEOUT_S = 90

# The notebook the test runs: the project imports in its kernel, one widget, one plotly figure.
CELLS = [
    "import sys, studio\nprint('kernel:', sys.executable)",
    "import ipywidgets as widgets\nwidgets.IntSlider(value=3, min=0, max=10, description='k')",
    "import plotly.graph_objects as go\n"
    "go.Figure(go.Scatter(x=[0, 1, 2, 3], y=[0, 1, 4, 9], name='squares'), layout_title_text='plotly renders')",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path) -> None:
    """A minimal nbformat-4 notebook with CELLS and the default python3 kernelspec (as notebooks/ has)."""
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
             for src in CELLS]
    meta = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}
    path.write_text(json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))


def wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.3)
    raise RuntimeError(f"JupyterLab did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def jupyterlab(root: Path):
    """JupyterLab on ``root`` at a free local port; yields (base URL, token). Isolated config and settings."""
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               JUPYTER_CONFIG_DIR=str(root / ".config"), JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
               JUPYTER_PLATFORM_DIRS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.user_settings_dir={root / '.settings'}", f"--LabApp.workspaces_dir={root / '.workspaces'}",
           "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI often run as root
        cmd.append("--allow-root")
    log = root / "jupyterlab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/api/status?token={token}", proc, log)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def lab_browser(browser):
    """The conftest's chromium, where the notebooks extra (JupyterLab, ipywidgets) is installed."""
    pytest.importorskip("jupyterlab", reason="the notebooks extra is not installed (make notebooks installs it)")
    pytest.importorskip("ipywidgets", reason="the notebooks extra is not installed (make notebooks installs it)")
    return browser


def kernel_ready(page) -> str:
    """Wait until the open notebook's kernel session is ready; the kernel's name."""
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext")
    return page.evaluate("""async () => {
        const ctx = window.jupyterapp.shell.currentWidget.sessionContext;
        await ctx.ready;
        return ctx.session.kernel.name;
    }""")


def test_jupyterlab_runs_a_notebook_with_the_project_kernel_and_renders_widgets_and_plotly(lab_browser, tmp_path):
    from playwright.sync_api import expect

    write_notebook(tmp_path / "check.ipynb")
    with jupyterlab(tmp_path) as (base, token):
        page = lab_browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{base}/lab/tree/check.ipynb?token={token}", wait_until="domcontentloaded")
        assert kernel_ready(page) == "python3"  # the notebooks' kernelspec, resolved to this interpreter
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

        outputs = page.locator(".jp-OutputArea")
        expect(outputs.filter(has_text="kernel:")).to_contain_text(sys.executable, timeout=TIMEOUT_MS)
        slider = outputs.locator(".widget-slider")
        expect(slider).to_be_visible(timeout=TIMEOUT_MS)
        expect(slider.locator(".widget-readout")).to_contain_text("3", timeout=TIMEOUT_MS)
        plot = outputs.locator(".js-plotly-plot")
        expect(plot.locator("svg.main-svg").first).to_be_visible(timeout=TIMEOUT_MS)
        expect(plot).to_contain_text("plotly renders", timeout=TIMEOUT_MS)
        expect(page.locator(".jp-OutputArea-output[data-mime-type*='stderr']")).to_have_count(0)
        page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
