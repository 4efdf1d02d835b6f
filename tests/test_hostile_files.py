"""Hostile files (issue 9 §4): crafted backups, snapshots with wrong metadata, a CRC-less
Arrow snapshot, FelixConfiguration bombs and absurd numbers are one-line errors with exit 2
— never a traceback, a PanicException or an abort — and control characters from files
reach the terminal escaped."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_bad_input import EXIT_BAD_INPUT, assert_one_line_error, cli
from test_output_files import module_pin


@pytest.fixture(scope="module")
def pin(bpffs):
    return module_pin(bpffs, "hostile", 200)


@pytest.fixture(scope="module")
def backup(pin, tmp_path_factory) -> Path:
    from ctscope._native import LiveMap

    b = tmp_path_factory.mktemp("bk") / "good.arrow"
    LiveMap(str(pin)).snapshot().write(str(b))
    return b


def rewrite_backup(src: Path, dst: Path, meta: dict | None = None, drop_value: bool = False,
                   value_type: pa.DataType | None = None) -> Path:
    t = pa.ipc.open_file(src).read_all()
    m = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    m.update(meta or {})
    if drop_value:
        t = t.drop_columns(["value"])
    if value_type is not None:
        t = t.set_column(1, "value", t.column("value").cast(value_type))
    t = t.replace_schema_metadata(m)
    with pa.ipc.new_file(dst, t.schema) as w:
        w.write_table(t)
    return dst


def restore(pin: Path, backup: Path, limit_mb: int = 2048) -> subprocess.CompletedProcess:
    """`restore --from` (plan only: reading the backup is the point) under an address-space
    limit, so an allocation sized by the file's numbers fails the test instead of the host."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    return subprocess.run([sys.executable, "-m", "ctscope", "restore", str(pin), "--from", str(backup)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)


@pytest.mark.kernel
@pytest.mark.parametrize("case,meta,kw,needle", [
    ("entries-1e11", {"ctscope.entries": "100000000000"}, {}, "entries"),
    ("entries-2^60", {"ctscope.entries": str(2**60)}, {}, "entries"),
    ("key-size-2^32-1", {"ctscope.key_size": str(2**32 - 1)}, {}, "key_size"),
    ("key-size-2^32+16", {"ctscope.key_size": str(2**32 + 16)}, {}, "key_size"),
    ("value-size-0", {"ctscope.value_size": "0"}, {}, "value_size"),
    ("no-value-column", {}, {"drop_value": True}, "columns"),
    ("value-is-binary", {}, {"value_type": pa.binary()}, "columns"),
    ("key-size-mismatch", {"ctscope.key_size": "8"}, {}, "key"),
    ("entries-not-a-number", {"ctscope.entries": "lots"}, {}, "not a number"),
])
def test_crafted_backups_are_one_line_exit_2(pin, backup, tmp_path, case, meta, kw, needle):
    bad = rewrite_backup(backup, tmp_path / f"{case}.arrow", meta, **kw)
    r = restore(pin, bad)
    assert "PanicException" not in r.stderr and r.returncode != -6 and r.returncode != 134, r.stderr
    assert_one_line_error(r, EXIT_BAD_INPUT, str(bad), needle)


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory"])
def test_backup_that_is_not_a_regular_file_is_refused(pin, tmp_path, kind):
    """`restore --from /dev/zero` read to its end grew without bound (23 GB in 6 s, then the
    OOM killer); a FIFO blocked forever; a directory was exit 1. Each is bad input."""
    if kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    else:
        path = tmp_path
    r = restore(pin, path)
    assert_one_line_error(r, EXIT_BAD_INPUT, str(path), "not a regular file")

@pytest.mark.kernel
@pytest.mark.parametrize("option,needle", [("--size-file", "expected a number"), ("--object", "not a regular file")])
def test_check_inputs_from_dev_zero_are_bounded(pin, option, needle):
    """`check --size-file /dev/zero` / `--object /dev/zero` read to the end: unbounded memory."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2048 << 20, 2048 << 20))

    r = subprocess.run([sys.executable, "-m", "ctscope", "check", str(pin), option, "/dev/zero"], capture_output=True,
                       text=True, timeout=120, preexec_fn=limit)
    assert_one_line_error(r, EXIT_BAD_INPUT, "/dev/zero", needle)

@pytest.mark.kernel
def test_good_backup_still_reads(pin, backup):
    from ctscope._native import read_backup

    assert read_backup(str(backup)).count == 200


@pytest.mark.kernel
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_backups_never_panic(backup, tmp_path_factory, data):
    """Random byte flips and truncations of a real backup: read_backup either returns or
    raises a CtscopeError; never a PanicException (BaseException) or an abort."""
    from ctscope._native import read_backup
    from ctscope.errors import CtscopeError

    raw = bytearray(backup.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    f = tmp_path_factory.mktemp("fz") / "b.arrow"
    f.write_bytes(bytes(raw))
    try:
        read_backup(str(f))
    except CtscopeError:
        pass


# ------------------------------------------------------------------------------ snapshots
@pytest.fixture(scope="module")
def snapshot(pin, tmp_path_factory) -> Path:
    s = tmp_path_factory.mktemp("snap") / "s.parquet"
    r = cli("snapshot", pin, "-o", s)
    assert r.returncode == 0, r.stderr
    return s


def with_meta(src: Path, dst: Path, change: dict, drop: tuple = ()) -> Path:
    import polars as pl

    meta = json.loads(pl.read_parquet_metadata(src)["ctscope"])
    meta.update(change)
    df = pl.read_parquet(src).drop(list(drop))
    df.write_parquet(dst, metadata={"ctscope": json.dumps(meta)})
    return dst


@pytest.mark.kernel
@pytest.mark.parametrize("change,needle", [
    ({"max_entries": "lots"}, "max_entries"),
    ({"max_entries": -5}, "max_entries"),
    ({"max_entries": 1e30}, "max_entries"),
    ({"now_ns": float("inf")}, "now_ns"),
    ({"now_ns": "soon"}, "now_ns"),
    ({"dump_start_wall_ns": "yesterday"}, "dump_start_wall_ns"),
    ({"dump_start_wall_ns": 1e30}, "dump_start_wall_ns"),
    ({"dump_end_wall_ns": "later"}, "dump_end_wall_ns"),
    ({"mono_ns": -1}, "mono_ns"),
])
def test_snapshot_metadata_of_wrong_type(snapshot, tmp_path, change, needle):
    bad = with_meta(snapshot, tmp_path / "bad.parquet", change)
    for cmd in ("stats", "report", "metrics", "expired"):
        r = cli(cmd, bad, "-o", tmp_path / f"out-{cmd}.txt")
        assert_one_line_error(r, EXIT_BAD_INPUT, str(bad), needle)


@pytest.mark.kernel
def test_snapshot_missing_a_column(snapshot, tmp_path):
    bad = with_meta(snapshot, tmp_path / "noproto.parquet", {}, drop=("proto",))
    for cmd in ("stats", "top", "expired", "metrics"):
        assert_one_line_error(cli(cmd, bad), EXIT_BAD_INPUT, str(bad), "proto")


@pytest.mark.kernel
def test_arrow_snapshot_without_its_crc_is_refused_unless_asked(pin, tmp_path):
    """The CRC keys removed from the footer (a file not written by ctscope, or stripped):
    refused (exit 2) unless --unverified. Only one of them gone is a damaged footer: refused
    even with --unverified."""
    from ctscope.snapshot_file import CRC_KEY, META_CRC_KEY

    good = tmp_path / "s.arrow"
    assert cli("snapshot", pin, "-o", good).returncode == 0
    data = good.read_bytes()
    key, meta_key = CRC_KEY.encode(), META_CRC_KEY.encode()
    assert data.count(key) == 1 and data.count(meta_key) == 1
    # Rename the keys in place (same length): the file stays a valid Arrow IPC file.
    stripped = tmp_path / "nocrc.arrow"
    stripped.write_bytes(data.replace(key, b"x" * len(key)).replace(meta_key, b"y" * len(meta_key)))
    assert_one_line_error(cli("stats", stripped), EXIT_BAD_INPUT, str(stripped), "CRC", "--unverified")
    r = cli("--unverified", "stats", stripped)
    assert r.returncode == 0, r.stderr
    assert cli("stats", good).returncode == 0
    half = tmp_path / "half.arrow"
    half.write_bytes(data.replace(key, b"x" * len(key)))
    assert_one_line_error(cli("--unverified", "stats", half), EXIT_BAD_INPUT, str(half), "corrupt Arrow IPC footer")


# -------------------------------------------------------------------- FelixConfiguration
FELIX_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
kind: FelixConfiguration
spec: {bpfMapSizeConntrack: *i}
"""


@pytest.mark.kernel
@pytest.mark.parametrize("name,text,needle", [
    ("bomb", FELIX_BOMB, "alias"),
    ("deep-yaml", "kind: FelixConfiguration\nspec: " + "[" * 100_000 + "]" * 100_000 + "\n", "nest"),
    ("deep-json", '{"kind": "FelixConfiguration", "spec": ' + "[" * 100_000 + "]" * 100_000 + "}", "nest"),
    ("metadata-list", "kind: FelixConfiguration\nmetadata: [1]\nspec: {bpfMapSizeConntrack: 1000}\n", "metadata"),
    ("inf", "kind: FelixConfiguration\nspec: {bpfMapSizeConntrack: .inf}\n", "bpfMapSizeConntrack"),
    ("big", "kind: FelixConfiguration\nspec: {}\n" + "#" * (20 << 20) + "\n", "MiB"),
])
def test_felix_configuration_bombs(pin, tmp_path, name, text, needle):
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    cmds = (("check", pin, "--felix-config", f), ("expired", pin, "--felix-config", f))
    for args in cmds[:1] if name == "inf" else cmds:  # `expired` reads only the timeouts
        r = subprocess.run([sys.executable, "-m", "ctscope", *map(str, args)], capture_output=True, text=True,
                           timeout=60, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)))
        assert_one_line_error(r, EXIT_BAD_INPUT, str(f), needle)


# -------------------------------------------------------------------------- numbers
@pytest.mark.kernel
def test_top_n_too_large(snapshot):
    assert_one_line_error(cli("top", snapshot, "-n", "99999999999999999999"), EXIT_BAD_INPUT, "-n")


def test_unknown_file_type_says_what_is_accepted(tmp_path):
    f = tmp_path / "small.csv"
    f.write_text("a,b\n1,2\n")
    line = assert_one_line_error(cli("stats", f), EXIT_BAD_INPUT, str(f))
    assert ".parquet" in line and "pinned" in line and "BPF filesystem" not in line


# ---------------------------------------------------------------------- terminal escapes
ESC = "\x1b]0;pwned\x07\x1b[2J\u202e\x9b"


def no_raw_controls(text: str) -> None:
    assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text[:400])


@pytest.mark.kernel
def test_control_characters_from_snapshots_are_escaped_on_terminals(snapshot, tmp_path):
    import polars as pl

    evil = tmp_path / "evil.parquet"
    meta = json.loads(pl.read_parquet_metadata(snapshot)["ctscope"])
    meta.update(map_name="cali" + ESC, hostname="node" + ESC)
    df = pl.read_parquet(snapshot).with_columns(pl.lit("10.9.9.9" + ESC).alias("src"))
    df.write_parquet(evil, metadata={"ctscope": json.dumps(meta)})
    for args in (("stats", evil), ("top", evil, "--by", "src"), ("query", evil, "SELECT type, src FROM ct LIMIT 3"),
                 ("expired", evil, "--all", "-n", "3")):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        no_raw_controls(r.stdout + r.stderr)
        assert "\\x1b" in r.stdout, (args[0], r.stdout[:300])
    # Machine formats keep the data exact (CSV) or JSON-escaped (JSON decodes back to it).
    r = cli("query", evil, "SELECT src FROM ct LIMIT 1", "-f", "csv")
    assert r.stdout.split("\n", 1)[1].rstrip("\n").strip('"') == "10.9.9.9" + ESC
    for fmt in ("json", "ndjson"):
        r = cli("query", evil, "SELECT src FROM ct LIMIT 1", "-f", fmt)
        no_raw_controls(r.stdout)
        rows = json.loads(r.stdout) if fmt == "json" else [json.loads(r.stdout.splitlines()[0])]
        assert rows[0]["src"] == "10.9.9.9" + ESC


def test_dump_table_escapes_and_ndjson_is_exact():
    import io

    import polars as pl

    from ctscope import export

    df = pl.DataFrame({"proto": [6], "src": ["10.0.0.1" + ESC], "type": ["normal"]})
    out = io.StringIO()
    export.write_text(iter([df]), "table", out)
    no_raw_controls(out.getvalue())
    assert "\\x1b]0;pwned\\x07" in out.getvalue()
    out = io.StringIO()
    export.write_text(iter([df]), "ndjson", out)
    no_raw_controls(out.getvalue())
    assert json.loads(out.getvalue())["src"] == "10.0.0.1" + ESC


def test_error_lines_escape_control_characters(tmp_path):
    r = cli("stats", tmp_path / f"missing{ESC}.parquet")
    no_raw_controls(r.stderr)
    assert_one_line_error(r, 3, "\\x1b]0;pwned\\x07")


@pytest.mark.kernel
def test_backup_map_name_is_escaped_in_restore_plan(pin, backup, tmp_path):
    bad = rewrite_backup(backup, tmp_path / "name.arrow", {"ctscope.name": "cali_v4_ct4" + ESC})
    r = restore(pin, bad)
    no_raw_controls(r.stdout + r.stderr)
    assert "cali_v4_ct4\\x1b]0;pwned" in r.stdout + r.stderr, r.stdout + r.stderr


# ------------------------------------------------------------------ cheap in-process fuzzing
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=8)
_META_KEYS = ["now_ns", "mono_ns", "max_entries", "dump_start_wall_ns", "dump_end_wall_ns", "entries", "map_name",
              "hostname", "layout", "nf_conntrack_sysctls"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_META_KEYS), _json, max_size=6))
def test_fuzzed_snapshot_metadata_is_accepted_whole_or_refused(meta):
    """Any JSON metadata either passes the check (and then every Snapshot property works)
    or is a SnapshotError; never another exception."""
    from ctscope.analysis.sources import Snapshot
    from ctscope.snapshot_file import check_metadata
    from ctscope.errors import SnapshotError

    try:
        check_metadata(Path("x.parquet"), meta)
    except SnapshotError as e:
        assert "\n" not in str(e) and "\x1b" not in str(e)
        return
    s = Snapshot("x.parquet", "parquet", meta, {}, int(meta.get("now_ns") or 0))
    assert s.summary()["max_entries"] >= 0


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_printable_leaves_no_control_characters(text):
    from ctscope.textsafe import json_controls, printable

    out = printable(text)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u202e\u2066" for c in out)
    if not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u061c\u200e\u200f" or 0x202a <= ord(c) <= 0x202e
               or 0x2066 <= ord(c) <= 0x2069 for c in text):
        assert out == text
    assert json.loads(json_controls(json.dumps(text, ensure_ascii=False))) == text


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=300))
def test_fuzzed_felix_configuration_is_parsed_or_refused(tmp_path_factory, text):
    from ctscope import felixconfig
    from ctscope.errors import BadArgument

    f = tmp_path_factory.mktemp("fc") / "f.yaml"
    f.write_text("kind: FelixConfiguration\n" + text)
    try:
        felixconfig.spec(f)
    except BadArgument:
        pass
