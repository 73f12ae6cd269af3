"""The engine's layers, read from every module's imports (AST): data < nets < core < train < methods
< components. A lower layer never imports a higher one, nothing under ``studio/`` imports gradio or
``components``, and no studio modules import each other in a circle. The modules are found by
walking the packages, so a new module is checked without editing this test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("data", "nets", "core", "train", "methods")  # then components, above all of studio


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module ``tree`` imports (relative imports resolved; function-level too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{a.name}" for a in node.names)  # `from studio.methods import nag` imports a module
    return out


def layer(name: str) -> int | None:
    """The rank of a module's layer: 0..4 for studio.<layer>, 5 for components, None otherwise."""
    parts = name.split(".")
    if parts[0] == "components":
        return len(LAYERS)
    if parts[0] == "studio" and len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def read_graph(root: Path) -> dict[str, set[str]]:
    """{module: imported names} for every module under ``root``/studio and ``root``/components."""
    graph = {}
    for package in ("studio", "components"):
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(path, root)
            graph[name] = imported(ast.parse(path.read_text()), name, path.name == "__init__.py")
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import against the layers, every gradio/components import under studio, every circle."""
    bad = []
    for module, names in graph.items():
        for name in names:
            top = name.split(".")[0]
            if module.startswith("studio") and top in ("gradio", "components") and module != "studio.cli":
                bad.append(f"{module} imports {name}")
            lm, ln = layer(module), layer(name)
            if lm is not None and ln is not None and ln > lm:
                bad.append(f"{module} imports {name} (a higher layer)")
    return bad + [" -> ".join(c) for c in circles(graph)]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles among the modules of ``graph`` (a package's __init__ importing its own modules
    does not count: Python runs it first)."""
    def resolve(name: str) -> str | None:
        while name and name not in graph:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for n in names if (r := resolve(n)) and r != m and not m.startswith(r + ".")}
             for m, names in graph.items()}
    found, done, stack = [], set(), []

    def visit(m: str) -> None:
        stack.append(m)
        for n in sorted(edges[m]):
            if n in stack:
                found.append(stack[stack.index(n):] + [n])
            elif n not in done:
                visit(n)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        if m not in done:
            visit(m)
    return found


def test_the_engine_keeps_its_layers_and_has_no_import_circle():
    assert violations(read_graph(ROOT)) == []


@pytest.mark.parametrize("module, source, expected", [
    ("studio.train.nag", "from studio.methods.nag import Params\n", "a higher layer"),
    ("studio.core.manager", "import studio.methods.generate\n", "a higher layer"),
    ("studio.data.digits", "from studio.nets import judges\n", "a higher layer"),
    ("studio.methods.generate", "import gradio as gr\n", "imports gradio"),
    ("studio.core.sampling", "def f():\n    from components.widgets import stream\n", "imports components"),
])
def test_a_forbidden_import_is_caught(module, source, expected):
    graph = read_graph(ROOT)
    graph[module] = graph[module] | imported(ast.parse(source), module, False)
    assert any(expected in v and v.startswith(module) for v in violations(graph))


def test_an_import_circle_is_caught():
    graph = {"studio.core.a": {"studio.core.b"}, "studio.core.b": {"studio.core.c.x"}, "studio.core.c": {"studio.core.a"}}
    assert circles(graph) == [["studio.core.a", "studio.core.b", "studio.core.c", "studio.core.a"]]
    assert violations({"studio.core.a": {"studio.core"}, "studio.core": {"studio.core.a"}}) == []  # package init
