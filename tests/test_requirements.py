"""requirements.txt (what a Hugging Face Space installs) against pyproject.toml and the code's own imports.

Two links of one chain: every third-party module that ``app.py``, ``studio/`` or ``components/`` imports is
provided by a distribution in pyproject's ``[project.dependencies]``, and requirements.txt installs every one of
those (torch as a CPU wheel). The Space builds from requirements.txt alone, before the repository is copied in.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11 or tomli")

ROOT = Path(__file__).resolve().parents[1]
APP_SOURCES = ("app.py", "studio", "components")  # what `python app.py` runs; tests/ and benchmarks/ do not count
OWN_PACKAGES = {"studio", "components", "app"}

# Modules imported lazily, inside a function, that come from an optional extra of pyproject instead of
# [project.dependencies]: module -> the extra that provides it. Empty today: transformers (extra "real") is
# imported by diffusers' Stable Diffusion pipelines, never by the studio's own code.
OPTIONAL_EXTRA_MODULES: dict[str, str] = {}


def normalize(name: str) -> str:
    """PEP 503 distribution name: ``Scikit_Learn`` -> ``scikit-learn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _dynamic_import(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module("x")``, ``__import__("x")``, ``lazy.module("x")`` or
    ``lazy.load("x")``."""
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    lazy = (isinstance(f, ast.Attribute) and f.attr in ("module", "load")
            and isinstance(f.value, ast.Name) and f.value.id == "lazy")
    if (name in ("import_module", "__import__") or lazy) and node.args:
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def imported_modules(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source`` (``import a.b``, ``from a import b``, dynamic)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and (dynamic := _dynamic_import(node)):
            names.add(dynamic)
    return {n.split(".")[0] for n in names}


def third_party_imports(root: Path = ROOT, sources: Iterable[str] = APP_SOURCES) -> dict[str, set[str]]:
    """Third-party top-level module -> the files (relative to ``root``) that import it."""
    found: dict[str, set[str]] = {}
    for entry in sources:
        path = root / entry
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for mod in imported_modules(file.read_text(encoding="utf-8")):
                if mod not in sys.stdlib_module_names and mod not in OWN_PACKAGES and mod != "__future__":
                    found.setdefault(mod, set()).add(str(file.relative_to(root)))
    return found


def missing_dependencies(modules: Iterable[str], declared: Iterable[str], module_dists: Mapping[str, list[str]],
                         optional: Mapping[str, str] = OPTIONAL_EXTRA_MODULES) -> dict[str, str]:
    """Module -> why it is not covered: no distribution in ``declared`` provides it (and it is no listed
    optional-extra module). ``module_dists`` is ``importlib.metadata.packages_distributions()``."""
    declared = {normalize(d) for d in declared}
    missing = {}
    for mod in sorted(modules):
        if mod in optional:
            continue
        dists = sorted({normalize(d) for d in module_dists.get(mod, [])})
        if not dists:
            missing[mod] = "no installed distribution provides it"
        elif not declared & set(dists):
            missing[mod] = f"provided by {', '.join(dists)}, which [project.dependencies] does not name"
    return missing


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def project_dependencies() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {normalize(r.name): r for r in reqs}


def requirements_txt() -> tuple[list[str], dict[str, Requirement]]:
    """(option lines such as ``--extra-index-url ...``, name -> requirement) of requirements.txt."""
    options, reqs = [], {}
    for raw in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        assert not line.startswith((".", "/")) and "://" not in line, (
            f"requirements.txt installs a path or URL ({line!r}); a Space installs requirements.txt before the "
            "repository is copied in, so list the project's dependencies instead")
        req = Requirement(line)
        reqs[normalize(req.name)] = req
    return options, reqs


def makefile_torch() -> Version:
    m = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert m, "the Makefile pins no TORCH ?= torch==<version>"
    return Version(m.group(1))


# ---- the checker itself, on a fake import set ----

def test_the_checker_reports_a_module_no_declared_distribution_provides():
    fake_dists = {"numpy": ["numpy"], "PIL": ["Pillow"], "yaml": ["PyYAML"], "sklearn": ["scikit-learn"]}
    declared = ["numpy>=1.26", "pillow", "scikit_learn"]
    missing = missing_dependencies({"numpy", "PIL", "sklearn", "yaml", "nowhere"},
                                   [Requirement(d).name for d in declared], fake_dists, optional={})
    assert set(missing) == {"yaml", "nowhere"}
    assert "pyyaml" in missing["yaml"] and "no installed distribution" in missing["nowhere"]
    assert missing_dependencies({"yaml"}, [], fake_dists, optional={"yaml": "some-extra"}) == {}


def test_the_scan_sees_plain_from_and_dynamic_imports_but_not_relative_ones(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        "import os, json\nimport numpy.linalg as la\nfrom yaml import safe_load\nfrom . import sibling\n"
        "from studio import lazy\n\ndef f():\n    import importlib\n    importlib.import_module('toml')\n"
        "    lazy.module('diffusers.utils')\n\nsp = lazy.load('scipy.linalg')\n")
    assert third_party_imports(tmp_path, ["pkg"]) == {m: {"pkg/a.py"}
                                                      for m in ("numpy", "yaml", "toml", "diffusers", "scipy")}


# ---- the project ----

def test_every_third_party_module_the_app_imports_is_a_declared_dependency():
    imports = third_party_imports()
    assert {"torch", "diffusers", "gradio"} <= set(imports), "the scan found none of the app's known imports"
    declared = project_dependencies()
    missing = missing_dependencies(imports, declared, importlib.metadata.packages_distributions())
    assert not missing, "add these to pyproject's [project.dependencies] (and requirements.txt):\n" + "\n".join(
        f"  {mod}: {why} (imported in {', '.join(sorted(imports[mod]))})" for mod, why in missing.items())


def test_optional_extra_modules_name_real_extras():
    extras = pyproject()["project"]["optional-dependencies"]
    for mod, extra in OPTIONAL_EXTRA_MODULES.items():
        assert extra in extras, f"{mod}: pyproject has no extra {extra!r}"


def test_requirements_txt_installs_every_project_dependency_with_its_range():
    _, reqs = requirements_txt()
    for name, dep in project_dependencies().items():
        assert name in reqs, f"requirements.txt lacks {dep} (a pyproject dependency)"
        if name != "torch":
            assert reqs[name].specifier == dep.specifier, f"requirements.txt has {reqs[name]}, pyproject {dep}"
    extra = set(reqs) - set(project_dependencies())
    assert not extra, f"requirements.txt installs {sorted(extra)}, which pyproject does not declare"


def test_requirements_txt_pins_a_cpu_torch_in_pyprojects_range_and_the_makefiles_version():
    options, reqs = requirements_txt()
    assert "torch" in reqs, "requirements.txt does not install torch"
    pins = [s for s in reqs["torch"].specifier if s.operator == "=="]
    assert len(pins) == 1, f"torch is not pinned to one version: {reqs['torch']}"
    version = Version(pins[0].version)
    assert version.local == "cpu", f"{reqs['torch']}: pin the CPU build (+cpu) so a Space never pulls CUDA wheels"
    assert any(o.split()[0] in ("--extra-index-url", "--index-url") and "download.pytorch.org/whl/cpu" in o
               for o in options), "requirements.txt does not name PyTorch's CPU wheel index"
    assert project_dependencies()["torch"].specifier.contains(version), "the CPU torch is outside pyproject's range"
    assert Version(version.public) == makefile_torch(), "requirements.txt and the Makefile pin different torches"


@pytest.mark.parametrize("key,value", [("sdk", "gradio"), ("app_file", "app.py")])
def test_the_readme_front_matter_makes_a_gradio_space_running_app_py(key, value):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md lost its Spaces front matter"
    front = text.split("\n---\n", 1)[0]
    assert re.search(rf"^{key}:\s*{re.escape(value)}\s*$", front, re.MULTILINE), f"front matter lacks {key}: {value}"


def test_the_spaces_gradio_version_is_in_pyprojects_range():
    front = (ROOT / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[0]
    m = re.search(r"^sdk_version:\s*\"?([^\s\"]+)\"?\s*$", front, re.MULTILINE)
    assert m, "the README's front matter names no sdk_version (the gradio a Space installs)"
    assert project_dependencies()["gradio"].specifier.contains(m.group(1)), (
        f"the Space runs gradio {m.group(1)}, outside pyproject's {project_dependencies()['gradio']}")
