"""Issue 9 §3, "Wrong output": what ctscope prints must be what it can promise.

* a key-by-key walk of a full LRU map under insert churn is bounded, and the dump records
  that the map changed under it; no command presents a fill above 100 % as the map's state;
* a map nearly full now is flagged (not only Felix's after-sweep projection);
* `check` without a FelixConfiguration says what it compared max_entries with, or that it
  did not check it, and never suggests a size no map can have;
* nonsense (negative timeouts) is a one-line error, exit 2;
* the smaller items: report numbers, `top --by pair`, `dump --where expired`, `query`'s
  count(*), `dump --debug`, `expired | head`, idle_s formatting, an empty CSV's header.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import bpfkernel
import ctbytes as cb
from test_churn import Writer, churn_writer, run_tool, watchdog  # noqa: F401 - fixtures

import ctscope

SAMPLE = Path(ctscope.__file__).parent / "sample" / "ct-sample.parquet"
S = 10**9


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctscope", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def one_line_error(p: subprocess.CompletedProcess, code: int, *words: str) -> None:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert len(lines) == 1 and lines[0].startswith("ctscope: error: "), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def percentages(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"([0-9][0-9,]*\.?[0-9]*)\s?%", text)]


def with_max_entries(src: Path, dst: Path, max_entries: int) -> Path:
    """A copy of a snapshot whose metadata says another max_entries (rows unchanged)."""
    meta = json.loads(pl.read_parquet_metadata(src)["ctscope"])
    meta["max_entries"] = max_entries
    pl.read_parquet(src).write_parquet(dst, metadata={"ctscope": json.dumps(meta)})
    return dst


# ------------------------------------------------------------------ 1. next_key walk under churn
WALK_MAX = 200_000
WALK_BOUND = 3  # iter.rs WALK_BOUND: visits <= 3 x max_entries + 1000


@pytest.mark.kernel
def test_next_key_walk_of_a_churning_full_lru_map_is_bounded_and_recorded(make_map, churn_writer, tmp_path,
                                                                           watchdog):
    """A full LRU map with a writer inserting as fast as it can (each insert evicts): every
    next_key dump either stops at the bound with a one-line IterationLimit, or finishes with
    a `walk` record in its metadata (rows read, restarts, vanished keys, visits, duration);
    a dump that read more rows than max_entries says so, and stats/report show "≥100%",
    never "100.1%"."""
    m = make_map("cali_v4_ct4", bpfkernel.LRU_HASH, 16, 88, WALK_MAX)
    run_tool(churn_writer, "fill", m.path, "c", 0, WALK_MAX)
    w = Writer(churn_writer, m.path, "insert", 0, WALK_MAX, tmp_path / "ctr", 0)
    outcomes: list[str] = []
    try:
        for attempt in range(6):
            out = tmp_path / f"walk{attempt}.parquet"
            r = run("dump", m.path, "--method", "next_key", "-o", out)
            if r.returncode == 1 and "key-by-key walk stopped" in r.stderr:
                one_line_error(r, 1, f"{WALK_BOUND} x max_entries {WALK_MAX}", "restarts", "--method batch")
                assert not out.exists()
                outcomes.append("bounded")
                break
            assert r.returncode == 0, r.stderr
            walk = json.loads(pl.read_parquet_metadata(out)["ctscope"])["walk"]
            rows = pl.read_parquet(out).height
            assert walk["method"] == "next_key" and walk["finished"] and walk["rows_read"] == rows
            assert rows <= walk["visits"] <= WALK_BOUND * WALK_MAX + 1000
            assert walk["rows_above_max_entries"] == max(rows - WALK_MAX, 0)
            assert walk["changed"] == (rows > WALK_MAX or walk["restarts"] > 0 or walk["vanished"] > 0)
            assert ("the map changed during the dump" in r.stderr) == walk["changed"]
            st = json.loads(run("stats", out, "--json").stdout)
            assert st["fill_ratio"] <= 1.0 and st["fill_ratio_after_sweep"] <= 1.0
            assert st["fill_seen_over_max"] == (rows > WALK_MAX) and st["snapshots"][0]["walk"] == walk
            text = run("stats", out).stdout
            assert max(percentages(text)) <= 100.0, text
            if rows > WALK_MAX:
                assert st["fill_now"] == "full"
                assert "≥100% of 200,000 now: full" in text and "the map changed during the dump" in text
                assert f"{rows:,} entries read, more than max_entries 200,000" in text
                outcomes.append("over")
                break
            outcomes.append("within")
    finally:
        res = w.stop()
    print(f"\nchurn writer: {res['rate']:,.0f} inserts/s; next_key dumps: {outcomes}")
    assert res["failures"] == 0
    # The writer evicts and inserts all along: some walk must have seen more than the map holds
    # (or been stopped by the bound).
    assert outcomes[-1] in ("bounded", "over"), outcomes


def test_fill_above_100_percent_is_never_presented_as_the_maps_state(tmp_path):
    """20,000 rows in a snapshot whose map holds 10,000: what a walk of a changing map reads."""
    snap = with_max_entries(SAMPLE, tmp_path / "over.parquet", 10_000)
    st = ctscope.stats(str(snap))
    assert (st["fill_ratio"], st["fill_seen_over_max"], st["fill_now"]) == (1.0, True, "full")
    assert st["fill_ratio_after_sweep"] <= 1.0
    text = run("stats", snap).stdout
    assert "200.0%" not in text and max(percentages(text)) <= 100.0, text
    assert "≥100% of 10,000 now: full" in text and "20,000 entries read, more than max_entries 10,000" in text
    html = ctscope.report(str(snap))
    assert "200.0%" not in html and "≥100%" in html and "FULL now" in html


# ------------------------------------------------------------------ 3. fill now flagged
def test_a_map_977_permille_full_is_flagged_in_stats_and_report(tmp_path):
    snap = with_max_entries(SAMPLE, tmp_path / "high.parquet", 20_470)  # 20,000 / 20,470 = 97.7 %
    st = ctscope.stats(str(snap))
    assert st["fill_now"] == "high" and st["autogrow"]["verdict"] == "ok"  # Felix's projection alone says ok
    text = run("stats", snap).stdout
    assert "97.7% of 20,470 now: high" in text and "WARNING: the map is 97.7% full now" in text
    assert "evicts live connections" in text
    html = ctscope.report(str(snap))
    assert "now: high" in html and "HIGH now" in html
    # The gauge is drawn in the alarm colour, not the "ok" green.
    from ctscope.analysis import charts

    gauge = html[html.index('data-chart="fill-gauge"'):]
    gauge = gauge[:gauge.index("</svg>")]
    assert f'stroke="{charts.BAD}"' in gauge and f'stroke="{charts.OK}"' not in gauge


def test_thresholds_have_one_owner():
    """0.85 / 0.90 appear in ctscope.fill only (stats, check, maps, report and metrics use it)."""
    root = Path(ctscope.__file__).parent
    for f in root.rglob("*.py"):
        if f.name == "fill.py":
            continue
        text = f.read_text()
        assert not re.search(r"\b0\.(85|90)\b", text), f"{f}: a copy of Felix's auto-grow thresholds"


@pytest.mark.kernel
def test_maps_flags_a_nearly_full_map(make_map):
    m = make_map("cali_v4_ct3", bpfkernel.HASH, 16, 88, 1000, bpfkernel.BPF_F_NO_PREALLOC)
    m.fill((cb.seq_key(i), cb.seq_value(i, 88)) for i in range(977))
    env = {**os.environ, "COLUMNS": "200"}
    r = run("maps", "--bpffs", m.path.parent.parent, "--all", "--json", env=env)
    row = next(x for x in json.loads(r.stdout) if x["path"] == str(m.path))
    assert (row["entries"], row["fill"], row["fill_now"]) == (977, 0.977, "high")
    r = run("maps", "--bpffs", m.path.parent.parent, "--all", env=env)
    assert r.returncode == 0, r.stderr
    assert "97.7% HIGH" in r.stdout and f"WARNING: {m.path}: the map is 97.7% full now" in r.stdout


# ------------------------------------------------------------------ 2. check's max_entries
@pytest.mark.kernel
def test_check_without_configuration_says_what_max_entries_was_compared_with(make_map, tmp_path):
    small = make_map("cali_v4_ct3", bpfkernel.HASH, 16, 88, 1000, bpfkernel.BPF_F_NO_PREALLOC)
    r = run("check", small.path, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    (row,) = [x for x in rep["maps"][0]["rows"] if x["field"] == "max_entries"]
    assert (row["pinned"], row["expected"], row["assumed"], row["ok"]) == (1000, 512_000, True, False)
    assert "Calico's default" in row["source"]
    assert rep["maps"][0]["max_entries_check"] == "not checked" and rep["max_entries_checked"] is False
    text = run("check", small.path, env={**os.environ, "COLUMNS": "300"}).stdout
    assert "max_entries NOT checked" in text and "--felix-config" in text
    assert not re.search(r": compatible\s*$", text, re.M), text  # never an unqualified "compatible"

    # A map of Calico's default size: consistent with the default, said to be an assumption.
    dflt = make_map("cali_v4_ct3", bpfkernel.HASH, 16, 88, 512_000, bpfkernel.BPF_F_NO_PREALLOC,
                    pin_name="default_ct3")
    r = run("check", dflt.path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["maps"][0]["max_entries_check"] == "assumed"
    text = run("check", dflt.path, env={**os.environ, "COLUMNS": "300"}).stdout
    assert "compatible (max_entries as Calico's default, assumed" in text

    # The node's auto-grow size file says Felix loads at least 1,048,576: a certain mismatch.
    size_file = tmp_path / "bpf_ct_map_size"
    size_file.write_text("1048576")
    r = run("check", dflt.path, "--size-file", size_file, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    (row,) = [x for x in json.loads(r.stdout)["maps"][0]["rows"] if x["field"] == "max_entries"]
    assert (row["expected"], row["ok"], row["assumed"]) == (1_048_576, False, False)
    assert str(size_file) in row["source"] and "at least" in row["source"]


@pytest.mark.kernel
@pytest.mark.parametrize("spec", ["bpfMapSizeConntrack: 99999999999999999999999999999",
                                  "bpfMapSizePerCPUConntrack: 9999999999999"])
def test_check_never_suggests_a_size_no_map_can_have(make_map, tmp_path, spec):
    m = make_map("cali_v4_ct3", bpfkernel.HASH, 16, 88, 1000, bpfkernel.BPF_F_NO_PREALLOC)
    felix = tmp_path / "felix.yaml"
    felix.write_text(f"kind: FelixConfiguration\nmetadata:\n  name: default\nspec:\n  {spec}\n")
    r = run("check", m.path, "--felix-config", felix, env={**os.environ, "COLUMNS": "400"})
    assert r.returncode in (1, 2), r.stdout + r.stderr  # a mismatch, or the setting refused as bad input
    for n in re.findall(r"--max-entries (\d+)", r.stdout):
        assert 1 <= int(n) <= 0xFFFFFFFF, r.stdout
    if r.returncode == 1:
        assert "which no BPF map can have" in r.stdout


# ------------------------------------------------------------------ 4. nonsense rejected
@pytest.mark.parametrize("how", ["--timeouts", "--felix-config"])
def test_negative_timeouts_are_a_one_line_error(tmp_path, how):
    if how == "--timeouts":
        arg = "TCPEstablished=-5s"
    else:
        arg = tmp_path / "felix.yaml"
        arg.write_text("kind: FelixConfiguration\nspec:\n  bpfConntrackTimeouts:\n    tcpEstablished: -5s\n")
    for cmd in ("expired", "stats"):
        one_line_error(run(cmd, SAMPLE, how, arg), 2, "TCPEstablished", "-5s", "negative")
    assert run("expired", SAMPLE, "--timeouts", "TCPEstablished=0s", "-f", "csv").returncode == 0


# ------------------------------------------------------------------ 5. the smaller items
def test_report_numbers_never_print_exponents():
    from ctscope.analysis.charts import _fmt, columns

    assert [_fmt(v) for v in (0, 999, 999.5, 1000, 999_499, 999_500, 999_999, 1_234_567, 999_999_999, 2e9)] == \
        ["0", "999", "1k", "1k", "999k", "1M", "1M", "1.23M", "1G", "2G"]
    svg = columns("h", "t", ["a", "b", "c"], [999_600, 999_999_000, 12])
    assert "e+" not in svg


def test_top_by_pair_does_not_rank_nat_fwd_stubs():
    df = pl.read_parquet(SAMPLE)
    stub_pairs = set(df.filter(pl.col("type") == "nat_fwd").select("src", "dst").iter_rows())
    other_pairs = set(df.filter(pl.col("type") != "nat_fwd").select("src", "dst").iter_rows())
    assert stub_pairs - other_pairs  # the sample has pairs that only NAT fwd stubs hold
    top = ctscope.top(str(SAMPLE), by="pair", n=20)
    assert not set(top.select("src", "dst").iter_rows()) & (stub_pairs - other_pairs), top
    assert top["entries"].sum() <= df.filter(pl.col("type") != "nat_fwd").height
    # --where naming `type` decides for itself.
    stubs = ctscope.top(str(SAMPLE), by="pair", n=5, where="type = 'nat_fwd'")
    assert stubs.height == 5 and stubs["bytes"].sum() == 0


def test_query_count_star_is_labelled_count():
    df = ctscope.query("SELECT count(*) FROM ct", str(SAMPLE))
    assert df.columns == ["count"] and df.item() == 20_000
    r = run("query", SAMPLE, "SELECT proto, count(*) FROM ct GROUP BY proto ORDER BY proto")
    assert r.returncode == 0 and r.stdout.split()[:2] == ["PROTO", "COUNT"], r.stdout
    assert ctscope.query("SELECT count(*) AS len FROM ct", str(SAMPLE)).columns == ["len"]


def test_debug_is_accepted_after_the_command(tmp_path):
    r = run("dump", tmp_path / "no-such-pin", "--debug")
    assert r.returncode == 3, r.stderr
    assert "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("ctscope: error: ")
    assert "No such option" not in r.stderr
    r = run("--debug", "dump", tmp_path / "no-such-pin")
    assert r.returncode == 3 and "Traceback" in r.stderr


def test_expired_stops_when_its_reader_goes_away(tmp_path, monkeypatch):
    """`expired DIR | head`: once the pipe is closed, the snapshots after the current one
    are not judged (before: every snapshot was judged and rendered first)."""
    import ctscope.cli.expired as cli_expired
    from ctscope.cli import main

    snaps = tmp_path / "snaps"
    snaps.mkdir()
    for i in range(4):
        shutil.copy(SAMPLE, snaps / f"n{i}.parquet")
    judged = set()
    real = cli_expired.judged_chunks

    def counting(*a, **kw):
        for df in real(*a, **kw):  # chunks of judged rows; `_snap` says whose
            judged.update(df["_snap"].unique().to_list())
            yield df

    monkeypatch.setattr(cli_expired, "judged_chunks", counting)
    r, w = os.pipe()
    os.close(r)  # the reader (`head`) has gone away
    out = io.TextIOWrapper(os.fdopen(w, "wb"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as e:
        main(["expired", str(snaps), "--all"])
    assert e.value.code == 0
    assert len(judged) < 4, f"judged {len(judged)} of 4 snapshots for a closed pipe"


def _table_column(text: str, name: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    i = lines[0].split().index(name)
    return sorted(ln.split()[i] for ln in lines[1:])


@pytest.mark.kernel
def test_idle_s_is_formatted_alike_by_dump_and_expired(make_ct_map):
    m = make_ct_map("v4", 4)
    now = 10 * 86_400 * S
    for i, idle_ns in enumerate((int(1234.56 * S), int(0.123 * S), 5 * S)):
        k = cb.pack_key(cb.UDP, f"10.0.0.{i + 1}", 5000 + i, "10.0.1.1", 53)
        m.update(k, cb.pack_value("v4", 4, ts0=0, last_seen=now - idle_ns))
    dump = run("dump", m.path, "--now-ns", now)
    exp = run("expired", m.path, "--all", "--now-ns", now)
    assert dump.returncode == 0 and exp.returncode == 0, dump.stderr + exp.stderr
    assert _table_column(dump.stdout, "IDLE_S") == _table_column(exp.stdout, "IDLE_S") == ["0.1", "1234.6", "5.0"]


@pytest.mark.kernel
def test_empty_csv_dump_has_a_header(make_ct_map, tmp_path):
    m = make_ct_map("v4", 4)
    r = run("dump", m.path, "-f", "csv")
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()
    assert len(header) == 1 and header[0].startswith("proto,addr_a,port_a,"), r.stdout
    r = run("dump", m.path, "-o", tmp_path / "empty.csv")
    assert r.returncode == 0 and (tmp_path / "empty.csv").read_text() == header[0] + "\n"


@pytest.mark.kernel
def test_dump_where_expired_says_where_it_works(make_ct_map):
    m = make_ct_map("v4", 4)
    one_line_error(run("dump", m.path, "--where", "expired"), 2, "ctscope expired")
    assert run("expired", m.path, "--all", "--where", "not expired").returncode == 0
