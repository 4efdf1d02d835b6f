"""`python/ctscope/_native.pyi` names exactly what the native module exports (issue 10): a
name added in Rust without a type, or a stale type for a removed name, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import ctscope
from ctscope import _native

STUB = Path(ctscope.__file__).with_name("_native.pyi")


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _stub() -> tuple[set[str], dict[str, set[str]]]:
    """Top-level public names of the stub, and the public members of each class in it."""
    tree = ast.parse(STUB.read_text())
    names: set[str] = set()
    members: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        if isinstance(node, ast.ClassDef):
            own: set[str] = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    own.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    own.add(item.target.id)
            members[node.name] = _public(own)
    return _public(names), members


def test_stub_names_every_export_and_nothing_else():
    names, _ = _stub()
    exported = _public(dir(_native))
    assert exported - names == set(), "exported by ctscope._native but not typed in _native.pyi"
    assert names - exported == set(), "typed in _native.pyi but not exported by ctscope._native"


def test_stub_classes_have_the_native_members():
    _, members = _stub()
    for cls, typed in members.items():
        obj = getattr(_native, cls)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            continue
        real = _public(dir(obj))
        assert real - typed == set(), f"{cls}: members not typed in _native.pyi"
        assert typed - real == set(), f"{cls}: typed in _native.pyi but not on the class"


def test_package_ships_the_stub_and_py_typed():
    assert STUB.is_file() and STUB.with_name("py.typed").is_file()
