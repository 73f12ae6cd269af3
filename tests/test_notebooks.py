"""Every notebook executes top to bottom on the embedded models, imports only ``studio``, and is
committed with its outputs stripped."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_is_a_tour():
    assert any(p.name == "00_tour.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_imports_only_studio(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before commit"
            assert not re.search(r"^\s*(from|import)\s+(components|gradio)\b", cell.source, re.M), cell.source


def _execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    """Run the notebook in a fresh kernel over IPC sockets (no TCP ports to race for)."""
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(cwd / "kernel"))
    NotebookClient(nb, km=km, timeout=240, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path):
    """Every cell runs without error. A cell that never reports back (a stall seen once in a
    clean-clone run over TCP: the kernel idle, the client waiting) is retried once in a fresh
    kernel; a cell that errs is never retried."""
    from nbclient.exceptions import CellTimeoutError

    try:
        nb = _execute(path, tmp_path)
    except CellTimeoutError:
        nb = _execute(path, tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
