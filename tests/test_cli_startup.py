"""A one-shot command imports only its own command module (and the package only what it
uses), and the table main() dispatches by names exactly the commands the modules register."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ctscope

SAMPLE = Path(ctscope.__file__).with_name("sample") / "ct-sample.parquet"

# Runs ctscope in a fresh interpreter, then prints which ctscope modules (and heavy
# libraries) it had imported.
CHILD = r"""
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(m for m in sys.modules if m.startswith("ctscope") or m in ("polars", "pydantic"))), file=sys.stderr))
from ctscope.cli import main
main(sys.argv[1:])
"""


def _modules(*args: str) -> set[str]:
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return set(json.loads(p.stderr.strip().splitlines()[-1]))


def test_the_dispatch_table_names_every_registered_command_in_help_order():
    # In a fresh interpreter: this process may have registered some commands already.
    code = ("import json; from ctscope.cli import COMMANDS, load_commands; from ctscope.cli.app import app; "
            "load_commands([]); print(json.dumps([[c.name or c.callback.__name__, c.callback.__module__] "
            "for c in app.registered_commands]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from ctscope.cli import COMMANDS

    assert json.loads(p.stdout) == [[name, f"ctscope.cli.{mod}"] for name, mod in COMMANDS.items()]


def test_a_command_imports_only_its_own_module():
    mods = _modules("stats", str(SAMPLE))
    assert {m for m in mods if m.startswith("ctscope.cli.")} == {
        "ctscope.cli.app", "ctscope.cli.analysis_io", "ctscope.cli.stats"}
    # nor what only other commands use
    assert not mods & {"ctscope.analysis.report", "ctscope.analysis.charts", "ctscope.repair.check", "ctscope.act"}


def test_no_command_parses_its_options_through_pydantic():
    # typer 0.29 validates every option with a pydantic TypeAdapter: ~65 ms more for every
    # command (pyproject.toml keeps typer below it). `demo` parses options like every command.
    assert "pydantic" not in _modules("top", str(SAMPLE), "--by", "dport", "-n", "3", "-f", "json")
    assert "pydantic" not in _modules("demo")


def test_help_and_unknown_commands_still_see_every_command():
    p = subprocess.run([sys.executable, "-m", "ctscope", "-h"], capture_output=True, text=True)
    assert p.returncode == 0
    from ctscope.cli import COMMANDS

    for name in COMMANDS:
        assert f" {name} " in p.stdout, name
    p = subprocess.run([sys.executable, "-m", "ctscope", "statz"], capture_output=True, text=True)
    assert p.returncode == 2 and "statz" in p.stderr


def test_lazy_package_attributes_resolve_and_fail_like_attributes():
    import pytest

    assert ctscope.stats.__module__ == "ctscope.analysis.stats" and callable(ctscope.lookup)
    assert isinstance(ctscope.__version__, str) and set(ctscope.__all__) <= set(dir(ctscope))
    # the native module's (Cargo.toml's) version is the installed package's
    from importlib.metadata import version

    assert ctscope.__version__ == version("ctscope")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ctscope.nope  # noqa: B018


def test_group_help_before_a_command_name_still_lists_every_command():
    # `ctscope -h dump` is the group's help (click handles -h before reaching `dump`): it
    # must list every command, not only the one module the command name would load.
    from ctscope.cli import COMMANDS

    for argv in (["-h", "dump"], ["--help", "stats"], ["--debug", "-h", "top"]):
        p = subprocess.run([sys.executable, "-m", "ctscope", *argv], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        for name in COMMANDS:
            assert f" {name} " in p.stdout, (argv, name)
