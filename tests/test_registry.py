"""The registry: every method has its tab, its contract test class, and the app builds from it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from studio.methods import METHODS, method

TESTS = Path(__file__).resolve().parent


def contract_classes() -> dict[str, str]:
    """{method_id: 'file::Class'} for every class in tests/ that subclasses MethodContract."""
    found = {}
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) == "MethodContract" for b in node.bases):
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "method_id"
                            and isinstance(stmt.value, ast.Constant)):
                        found[stmt.value.value] = f"{path.name}::{node.name}"
    return found


def test_every_registered_method_has_a_contract_test():
    missing = [m.id for m in METHODS if m.id not in contract_classes()]
    assert not missing, f"no MethodContract test class for: {missing}"


def test_ids_are_unique_and_every_tab_builder_exists():
    assert len({m.id for m in METHODS}) == len(METHODS)
    for m in METHODS:
        module, _, name = m.tab.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), m.tab
        assert m.module.__name__ == f"studio.methods.{m.id}" and method(m.id) is m


def test_importing_the_registry_imports_no_method():
    import subprocess
    import sys

    code = "import sys, studio.methods\nprint([m for m in sys.modules if m.startswith('studio.methods.')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_app_names_no_method_by_hand():
    source = (TESTS.parent / "components" / "app.py").read_text()
    for m in METHODS:
        assert f"components.{m.tab.split('.')[1]}" not in source and f"build_{m.id}_tab" not in source


def test_a_model_dropdown_lists_only_the_kinds_its_method_drives(zoo_manager):
    assert "tsdiff-co2" not in method("generate").models(zoo_manager)  # was offered, then failed
    assert set(method("forecast").models(zoo_manager)) == {k for k in zoo_manager.keys() if k.startswith("tsdiff-")}
    assert method("edit").models(zoo_manager) == ["ign-digits", "sign-digits"]
    assert method("nag").models(zoo_manager) == ["nag-digits"]
    assert not {"judge-digits", "text-encoder", "guide-clean"} & set(method("generate").models(zoo_manager))
