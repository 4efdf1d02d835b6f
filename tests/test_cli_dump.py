"""`ctscope dump`, `maps`, `synth` and `demo` from the command line, as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import polars as pl
import pytest

import ctscope

pytestmark = pytest.mark.kernel


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "ctscope", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"ctscope {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


@pytest.fixture(scope="module")
def synth_map(bpffs):
    d = bpffs / "cli" / "tc" / "globals"
    d.mkdir(parents=True)
    pin = d / "cali_v4_ct4"
    run("synth", str(pin), "--entries", "3000", "--max-entries", "8192", "--seed", "3")
    return pin


@pytest.fixture(scope="module")
def reference(synth_map):
    return ctscope.open_map(synth_map).to_polars(now_ns=10**18)


def test_synth_makes_calico_shaped_map(synth_map):
    info = ctscope.open_map(synth_map).info
    assert (info.name, info.map_type, info.key_size, info.value_size, info.max_entries, info.map_flags) == (
        "cali_v4_ct4", "lru_hash", 16, 88, 8192, 0)
    df = ctscope.open_map(synth_map).to_polars()
    assert df.height == 3000
    assert set(df["type"].unique()) == {"normal", "nat_fwd", "nat_rev"}
    assert set(df["tcp_state"].drop_nulls().unique()) == {"ESTABLISHED", "SYN-SENT", "CLOSED", "RESET"}
    assert {1, 6, 17}.issubset(set(df["proto"].unique()))
    assert df.filter(pl.col("flag_names").list.contains("B-A")).height > 0
    # Every NAT fwd stub points at a NAT rev entry that exists.
    rev = df.filter(pl.col("type") == "nat_rev").select("proto", "addr_a", "port_a", "addr_b", "port_b")
    fwd = df.filter(pl.col("type") == "nat_fwd").select(
        pl.col("rev_proto").alias("proto"), pl.col("rev_addr_a").alias("addr_a"), pl.col("rev_port_a").alias("port_a"),
        pl.col("rev_addr_b").alias("addr_b"), pl.col("rev_port_b").alias("port_b"))
    assert fwd.height > 0 and fwd.join(rev, on=fwd.columns, how="anti").height == 0


def test_synth_refuses_existing_pin(synth_map):
    p = run("synth", str(synth_map), "--entries", "1", check=False)
    assert p.returncode == 2 and "already exists" in p.stderr and p.stderr.count("\n") == 1


def test_default_pin_found_under_bpffs(synth_map, reference):
    bpffs_root = synth_map.parent.parent.parent
    p = run("dump", "--bpffs", str(bpffs_root), "-f", "ndjson")
    assert len(p.stdout.splitlines()) == reference.height


def test_ndjson_and_json_hold_every_row_and_column(synth_map, reference):
    nd = [json.loads(line) for line in run("dump", str(synth_map), "-f", "ndjson", "--now-ns", str(10**18)).stdout.splitlines()]
    arr = json.loads(run("dump", str(synth_map), "-f", "json", "--now-ns", str(10**18)).stdout)
    assert len(nd) == len(arr) == reference.height
    assert set(nd[0]) == set(reference.columns)
    key = lambda r: (r["proto"], r["addr_a"], r["port_a"], r["addr_b"], r["port_b"])  # noqa: E731
    by_key = {key(r): r for r in reference.to_dicts()}
    for r in arr:
        exp = by_key[key(r)]
        assert r["last_seen_ns"] == exp["last_seen_ns"] and isinstance(r["last_seen_ns"], int)
        assert r["flag_names"] == exp["flag_names"]
        assert r["a2b_bytes"] == exp["a2b_bytes"]


def test_csv_round_trips(synth_map, reference):
    rows = list(csv.DictReader(io.StringIO(run("dump", str(synth_map), "-f", "csv").stdout)))
    assert len(rows) == reference.height
    assert set(rows[0]) == set(reference.columns)
    assert sum(1 for r in rows if "B-A" in r["flag_names"].split("|")) == reference.filter(
        pl.col("flag_names").list.contains("B-A")).height


@pytest.mark.parametrize("fmt,reader", [("parquet", pl.read_parquet), ("arrow", pl.read_ipc)])
def test_binary_snapshots_equal_live_dump(synth_map, reference, tmp_path, fmt, reader):
    out = tmp_path / f"snap.{fmt}"
    p = run("dump", str(synth_map), "-o", str(out), "--now-ns", str(10**18))
    assert f"wrote {reference.height} entries" in p.stderr
    got = reader(out)
    keys = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
    assert got.sort(keys).equals(reference.sort(keys))
    assert not list(tmp_path.glob(".*partial")), "temporary file left behind"


def test_parquet_metadata_records_the_map(synth_map, tmp_path):
    out = tmp_path / "snap.parquet"
    run("dump", str(synth_map), "-o", str(out))
    meta = json.loads(pl.read_parquet_metadata(out)["ctscope"])
    assert meta["max_entries"] == 8192 and meta["layout"] == "v4" and meta["entries"] == 3000
    assert meta["map_name"] == "cali_v4_ct4" and meta["boot_wall_ns"] > 0


# Runs ctscope in a fresh interpreter and says whether polars was imported.
_POLARS_CHILD = r"""
import atexit, sys
atexit.register(lambda: print("polars imported:", "polars" in sys.modules, file=sys.stderr))
from ctscope.cli import main
main(sys.argv[1:])
"""


def test_parquet_paths_write_the_same_rows_and_only_where_needs_polars(synth_map, reference, tmp_path):
    # Without --where the dump's batches go straight into the file (no polars at all);
    # with --where they go through polars frames; --limit applies either way. The three
    # files hold exactly the rows of the live dump they select.
    keys = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
    cases = {
        "direct": ([], reference, False),
        "limit": (["--limit", "100"], None, False),
        "where": (["--where", "dport >= 1024 OR proto = 17"],
                  reference.filter((pl.col("dport") >= 1024) | (pl.col("proto") == 17)), True),
    }
    for name, (extra, want, polars_used) in cases.items():
        out = tmp_path / f"{name}.parquet"
        p = subprocess.run([sys.executable, "-c", _POLARS_CHILD, "dump", str(synth_map), "-o", str(out),
                            "--now-ns", str(10**18), *extra], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert f"polars imported: {polars_used}" in p.stderr, (name, p.stderr)
        got = pl.read_parquet(out)
        if want is None:  # --limit: 100 of the live rows, whichever the walk met first
            assert got.height == 100
            assert got.sort(keys).equals(reference.join(got.select(keys), on=keys, how="semi").sort(keys))
        else:
            assert 0 < got.height and got.sort(keys).equals(want.sort(keys)), name
        meta = json.loads(pl.read_parquet_metadata(out)["ctscope"])
        assert meta["entries"] == got.height and meta["layout"] == "v4", name


def test_a_parquet_dump_to_stdout_is_the_same_file(synth_map, reference, tmp_path):
    out = tmp_path / "stdout.parquet"
    with open(out, "wb") as f:
        p = subprocess.run([sys.executable, "-m", "ctscope", "dump", str(synth_map), "-f", "parquet",
                            "--now-ns", str(10**18)], stdout=f, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, p.stderr
    keys = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
    assert pl.read_parquet(out).sort(keys).equals(reference.sort(keys))


def test_where_and_limit(synth_map, reference):
    p = run("dump", str(synth_map), "-f", "ndjson", "--where", "proto = 17 AND type = 'normal'")
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(rows) == reference.filter((pl.col("proto") == 17) & (pl.col("type") == "normal")).height > 0
    assert all(r["proto"] == 17 for r in rows)
    assert len(run("dump", str(synth_map), "-f", "ndjson", "--limit", "7").stdout.splitlines()) == 7
    assert len(run("dump", str(synth_map), "-f", "ndjson", "--limit", "5", "--where", "proto = 6").stdout.splitlines()) == 5


def test_bad_where_is_one_line_exit_2(synth_map):
    p = run("dump", str(synth_map), "--where", "no_such_col = 1", check=False)
    assert p.returncode == 2 and p.stderr.startswith("ctscope: error: --where") and p.stderr.count("\n") == 1


def test_table_is_aligned_text(synth_map, reference):
    lines = run("dump", str(synth_map), "--limit", "20").stdout.splitlines()
    assert lines[0].split()[:5] == ["PROTO", "SRC", "SPORT", "DST", "DPORT"]
    assert len(lines) == 21


def test_maps_lists_fill(synth_map):
    out = json.loads(run("maps", "--bpffs", str(synth_map.parent.parent.parent), "--json").stdout)
    assert len(out) == 1
    assert out[0]["entries"] == 3000 and out[0]["max_entries"] == 8192 and out[0]["version"] == 4
    assert abs(out[0]["fill"] - 3000 / 8192) < 1e-3


def test_demo_runs_on_a_private_bpffs():
    p = run("demo", "--entries", "20000")
    assert "dumped 20,000 entries into polars" in p.stdout
    assert "Total entries: 20000" in p.stdout and "Total connections:" in p.stdout


def test_demo_sample_works_without_a_kernel():
    p = run("demo", "--sample")
    assert "Total entries: 20000" in p.stdout and "ct-sample.parquet" in p.stdout


def test_bench_reports_ratios_against_the_floor(synth_map):
    r = json.loads(run("bench", str(synth_map), "--repeat", "1", "--json").stdout)
    assert r["entries"] == 3000 and r["floor"] == "c"  # the C floor compiled and ran
    assert r["floor_median_s"] > 0 and r["bpftool_x_floor"] > 0
    for label in ("open_map().to_polars()", "to_polars() [warm]", 'scan_map().select("dport", "proto")',
                  "$ ctscope dump -o X.parquet", "$ ctscope stats", "$ ctscope top --by dport", "$ ctscope expired",
                  '$ ctscope dump --where "dport = 443"'):
        row = r["rows"][label]
        assert row["median_s"] > 0 and row["median_x_floor"] > 0 and row["best_x_floor"] > 0 and row["peak_mb"] > 0
    assert 0 < r["arrow_mb"] and r["select_3_peak_ratio"] > 0  # (a 3,000-entry map: no size comparison)


@pytest.mark.kernel
def test_bench_without_a_pin_measures_an_ipv6_map_too():
    r = json.loads(run("bench", "--entries", "3000", "--repeat", "1", "--no-bpftool", "--json").stdout)
    assert r["entries"] == 3000 and r["v6"]["floor_median_s"] > 0 and r["v6"]["pin"].endswith("cali_v6_ct4")
    for label in ("IPv6 map: open_map().to_polars()", 'IPv6 map: scan_map().select("dport", "proto")'):
        row = r["v6"]["rows"][label]
        assert row["median_s"] > 0 and row["median_x_floor"] > 0 and row["peak_mb"] > 0


def test_batch_nbytes_counts_every_arrow_buffer(synth_map):
    """Batch.nbytes (the bench's Arrow size) covers what pyarrow counts, string views
    included, which polars' estimated_size leaves out."""
    pa = pytest.importorskip("pyarrow")
    m = ctscope.open_map(synth_map)
    ours, theirs, rows = 0, 0, 0
    d1, d2 = m.dump(threads=1, now_ns=10**18), m.dump(threads=1, now_ns=10**18)
    while (b1 := d1.next_batch()) is not None:
        b2 = d2.next_batch()
        ours += b1.nbytes
        theirs += pa.table(b2).get_total_buffer_size()
        rows += len(b1)
    assert rows == 3000
    n_views = sum(1 for f in pa.table(m.dump(limit=1)).schema if f.type == pa.string_view())
    assert n_views >= 11
    assert theirs >= rows * 16 * n_views  # a 16-byte view per row per string column
    assert theirs <= ours <= 1.5 * theirs  # ours counts allocated capacity
    assert ours > m.to_polars().estimated_size()


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "table"])
def test_rows_reach_a_pipe_when_stderr_is_a_terminal(synth_map, fmt):
    """From a shell, `ctscope dump | cmd` has stderr on the terminal: the progress line must
    not capture stdout (rich's Progress redirects it by default), or the pipe gets nothing."""
    import os
    import threading

    leader, follower = os.openpty()

    def drain() -> None:  # keep the terminal's buffer from filling up and blocking the writer
        try:
            while os.read(leader, 65536):
                pass
        except OSError:
            pass

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        p = subprocess.run([sys.executable, "-m", "ctscope", "dump", str(synth_map), "-f", fmt],
                           stdout=subprocess.PIPE, stderr=follower, text=True, timeout=120)
    finally:
        os.close(follower)
        t.join(timeout=5)
        os.close(leader)
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert len(lines) == 3000 + (fmt in ("csv", "table")), p.stdout[:300]


def assert_one_line_error(p: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.startswith("ctscope: error: ") and p.stderr.count("\n") == 1, p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)


# ------------------------------------------------------------------------------------ ct3 layout key by key
def test_dump_next_key_detects_v3_created(bpffs):
    """`dump --method next_key` on a ct3 map written by Calico <= 3.29 decodes offset 0 as
    `created`, as `--method batch` does (it used to assume v3 and null created_ns)."""
    pin = bpffs / "cli-ct3" / "cali_v4_ct3"
    pin.parent.mkdir()
    run("synth", str(pin), "--entries", "2000", "--version", "3", "--layout", "v3-created")
    for method in ("next_key", "batch"):
        rows = [json.loads(x) for x in run("dump", str(pin), "--method", method, "-f", "ndjson", "--limit", "3").stdout.splitlines()]
        assert len(rows) == 3
        assert all(r["created_ns"] is not None and r["rst_seen_ns"] is None for r in rows), (method, rows[0])


# ------------------------------------------------------------------------------------ maps
def test_maps_bpffs_missing_or_not_a_bpffs(tmp_path):
    missing = tmp_path / "nonexistent"
    for extra in ([], ["--all"], ["--json"]):
        assert_one_line_error(run("maps", "--bpffs", str(missing), *extra, check=False), 3, str(missing))
        # an existing directory that is no bpffs: never walked (think --bpffs / --all)
        assert_one_line_error(run("maps", "--bpffs", str(tmp_path), *extra, check=False), 2, str(tmp_path), "bpffs")


def test_maps_output_is_not_cut_when_piped(synth_map):
    """stdout is a pipe here: the table keeps whole paths instead of rich's 80 columns."""
    root = synth_map.parent.parent.parent
    p = run("maps", "--bpffs", str(root))
    assert str(synth_map) in p.stdout, p.stdout
    assert "3,000" in p.stdout and "8,192" in p.stdout


def test_maps_all_skips_the_bpffs_own_files(bpffs, synth_map):
    """`maps --all` lists pinned objects only: not the bpffs's maps.debug / progs.debug;
    dumping one is a one-line 'not a BPF map pin', exit 2."""
    own = [bpffs / n for n in ("maps.debug", "progs.debug") if (bpffs / n).exists()]
    if not own:
        pytest.skip("this kernel's bpffs has no maps.debug/progs.debug (CONFIG_BPF_PRELOAD off)")
    rows = json.loads(run("maps", "--bpffs", str(bpffs), "--all", "--json").stdout)
    paths = {r["path"] for r in rows}
    assert str(synth_map) in paths
    assert not any(p.endswith(".debug") for p in paths), paths
    assert not any("No such file" in r.get("error", "") for r in rows), rows
    for p in own:
        assert_one_line_error(run("dump", str(p), check=False), 2, str(p), "not a BPF map pin")


UNPRIVILEGED_MAPS = """
import contextlib, ctypes, io, os, sys
import ctscope.cli
argv = sys.argv[1:]
with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
    try:
        ctscope.cli.main(["maps", "--bpffs", "/nonexistent"])  # import everything while we can
    except SystemExit:
        pass
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(47, 4, 0, 0, 0) == 0  # PR_CAP_AMBIENT_CLEAR_ALL
hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
assert libc.capset(hdr, (ctypes.c_uint32 * 6)()) == 0
ctscope.cli.main(argv)
"""


def test_maps_every_pin_denied_exits_4(synth_map):
    """As an unprivileged user every pin fails with a permission error: `maps` says so and
    exits 4, as `check` does, instead of exit 0 with a table of errors."""
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux)")
    root = synth_map.parent.parent.parent
    cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all,+dac_read_search",
           "--ambient-caps=+dac_read_search", sys.executable, "-c", UNPRIVILEGED_MAPS]
    p = subprocess.run(cmd + ["maps", "--bpffs", str(root)], capture_output=True, text=True, timeout=120)
    assert_one_line_error(p, 4, str(synth_map))
    p = subprocess.run(cmd + ["maps", "--bpffs", str(root), "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 4, p.stderr
    rows = json.loads(p.stdout)
    assert [r["path"] for r in rows] == [str(synth_map)] and "error" in rows[0]


# ------------------------------------------------------------------------------------ symlinks
def test_read_commands_follow_a_symlink_to_a_pin(synth_map, reference, tmp_path, bpffs):
    link = tmp_path / "link"
    link.symlink_to(synth_map)
    rows = run("dump", str(link), "-f", "ndjson", "--now-ns", str(10**18)).stdout.splitlines()
    assert len(rows) == reference.height
    # a CT-named link in another tc/globals: `maps` reads its target
    g = bpffs / "linked" / "tc" / "globals"
    g.mkdir(parents=True)
    (g / "cali_v4_ct4").symlink_to(synth_map)
    out = json.loads(run("maps", "--bpffs", str(bpffs / "linked"), "--json").stdout)
    assert len(out) == 1 and out[0]["entries"] == 3000 and out[0]["version"] == 4, out
    # resize never acts through a link (plan only: no --yes), even one on the bpffs
    assert_one_line_error(run("resize", str(g / "cali_v4_ct4"), "--max-entries", "16384", check=False), 2, "symlink")


# ------------------------------------------------------------------------------------ synth options
@pytest.mark.parametrize("args", [["--max-entries", "0"], ["--entries", "-1"], ["--max-entries", "-1"],
                                  ["--seed", "-1"], ["--max-entries", str(2**32)], ["--seed", str(2**64)]])
def test_synth_rejects_out_of_range_numbers(bpffs, args):
    pin = bpffs / "synth-bad"
    argv = ["synth", str(pin), "--entries", "10", *args]
    p = run(*argv, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and args[0] in p.stderr, p.stderr
    assert not pin.exists()


def test_synth_makes_directories_on_a_bpffs_and_refuses_elsewhere(bpffs, tmp_path):
    pin = bpffs / "synth-dirs" / "tc" / "globals" / "cali_v4_ct4"
    run("synth", str(pin), "--entries", "10")
    assert ctscope.open_map(pin).info.max_entries == 512_000
    p = run("synth", str(tmp_path / "cali_v4_ct4"), "--entries", "10", check=False)
    assert p.returncode == 2 and "not on a BPF filesystem" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert list(tmp_path.iterdir()) == []
