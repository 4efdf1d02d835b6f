"""The package type-checks (mypy, configured in pyproject.toml), and calls into
`ctscope._native` are checked against `_native.pyi` (issue 10)."""

from __future__ import annotations

from pathlib import Path

from mypy import api  # the [test] extra

ROOT = Path(__file__).resolve().parents[1]


def _mypy(*args: str) -> tuple[int, str]:
    out, err, rc = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", "/dev/null", *args])
    return rc, out + err


def test_package_type_checks():
    rc, out = _mypy()  # files = python/ctscope, from pyproject.toml
    assert rc == 0, out


def test_a_wrong_native_call_fails_the_check(tmp_path, monkeypatch):
    """The configuration is lenient on the existing code but not on calls into the core:
    a wrong argument count, keyword, type or name is an error."""
    bad = tmp_path / "bad_native_calls.py"
    bad.write_text(
        "from ctscope import _native\n"
        "from ctscope._native import LiveMap, raw_read\n"
        "raw_read('/sys/fs/bpf/x', 4096, 'batch', 'extra')\n"        # too many arguments
        "LiveMap('/sys/fs/bpf/x', writeable=True)\n"                  # no such keyword
        "LiveMap('/sys/fs/bpf/x').create_twin('many')\n"              # wrong type
        "_native.no_such_function()\n")                               # no such name
    monkeypatch.setenv("MYPYPATH", str(ROOT / "python"))
    rc, out = _mypy(str(bad))
    assert rc == 1, out
    for line, code in ((3, "call-arg"), (4, "call-arg"), (5, "arg-type"), (6, "attr-defined")):
        assert f"bad_native_calls.py:{line}: error:" in out and f"[{code}]" in out, out


def test_no_unused_or_undefined_names():
    """pyflakes' rules (ruff's F): an assigned-but-unused variable once hid a CSV bug
    (analysis_io built the list-free frame and wrote the other one)."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    p = subprocess.run([ruff, "check", "--select", "F", "--output-format", "concise", str(ROOT / "python" / "ctscope"),
                        str(ROOT / "benches")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    # tests: pytest fixtures are imported and then named as parameters (F811 by design)
    p = subprocess.run([ruff, "check", "--select", "F", "--ignore", "F811", "--output-format", "concise",
                        str(ROOT / "tests")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
