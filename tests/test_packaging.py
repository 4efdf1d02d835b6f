"""What `pip install .` brings must be enough: every module the package imports comes
from Python's standard library, the package itself, or a distribution its declared
dependencies pull in. The test environment holds more (test extras, pyspark ...), so a
missing declaration would otherwise only show on a user's clean machine, as `import click`
did once typer stopped depending on click."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "ctscope"


def optional_imports(tree: ast.AST) -> set[ast.AST]:
    """Import statements guarded by `try: ... except ImportError` (optional by design)."""
    out: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            out.update(n for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def imported_top_level_modules() -> dict[str, list[str]]:
    """Top-level module -> files importing it (every import statement, lazy ones included;
    optional ones, guarded by `except ImportError`, left out)."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        optional = optional_imports(tree)
        for node in ast.walk(tree):
            if node in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                found.setdefault(n.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def requirement_name(req: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0].lower().replace("_", "-")


def dependency_closure(names: list[str]) -> set[str]:
    """The declared distributions and, recursively, what they require (without extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [requirement_name(r) for r in reqs if "extra ==" not in r]
    return seen


def test_every_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = dependency_closure([requirement_name(r) for r in project["dependencies"]])
    providers = metadata.packages_distributions()
    undeclared = {}
    for module, files in imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module in ("ctscope", "__future__"):
            continue
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not dists & allowed:
            undeclared[module] = (sorted(dists) or ["not installed"], sorted(set(files)))
    assert not undeclared, f"imported but not brought by pyproject's dependencies: {undeclared}"


def test_the_check_sees_lazy_imports():
    """The scan must find imports inside functions too (yaml is imported lazily)."""
    mods = imported_top_level_modules()
    assert {"polars", "typer", "rich", "yaml"} <= set(mods)


def test_cli_runs_without_click():
    """typer >= 0.2x vendors its own click and installs none: the CLI, its one-line usage
    errors included, must not need the click distribution."""
    import subprocess

    code = ("import sys; sys.modules['click'] = None  # as if not installed\n"
            "from ctscope.cli import main; main(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", code, "dump", "--no-such-option"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("ctscope: error: No such option"), r.stderr
    r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "dump" in r.stdout, r.stderr
