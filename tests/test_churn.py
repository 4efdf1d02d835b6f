"""Dumps of a 1,000,000-entry map while a C writer inserts and deletes at >= 100,000 ops/s
(issue 5, "Churn"): 50 dumps in a row over two maps, mixing `batch` with one and two
range workers and `next_key`, raw and decoded layouts. Every dump must finish without
error, hold no key twice, contain every key that existed for the whole dump, and contain
no key that could not have existed during it.

* HASH (ct3-shaped): 300,000 stable TCP keys the writer never touches, plus a sliding
  window of 500,000 UDP keys (insert key j, delete key j-500,000). The writer publishes
  j in a shared counter, so the keys that existed throughout a dump are known exactly:
  every stable key, and churn keys [j_end - LIVE + 1, j_start - 1].
* LRU_HASH (ct4-shaped), full: the writer only inserts new keys, so the kernel evicts
  one entry per insert. Which keys survive is the kernel's choice, so the keys that
  existed throughout are taken from two independent snapshots (before and after the
  dump; a key is never re-inserted, so present in both means present all along).

The writer's achieved rate is printed and checked only as a precondition (the test
needs real churn); no assertion depends on how long ctscope takes.
"""

from __future__ import annotations

import faulthandler
import mmap
import signal
import struct
import subprocess
from pathlib import Path

import polars as pl
import pytest

import bpfkernel
import ctscope
from conftest import build_c
from ctscope.ctmap import dump_to_polars

pytestmark = pytest.mark.kernel

TESTS_DIR = Path(__file__).resolve().parent
MAX_ENTRIES = 1_000_000
STABLE = 300_000
LIVE = 500_000
MIN_WRITER_RATE = 100_000  # inserts+deletes per second the issue asks for
# Target rates, kept modest above the floor: a faster writer only starves ctscope of the
# second core and empties the "existed throughout" sets the checks need.
HASH_RATE = 120_000  # ops/s: 60,000 inserts + 60,000 deletes
LRU_RATE = 60_000  # inserts/s, each also evicting one entry: 120,000 map changes/s
STABLE_BASE = 0x0A000000  # 10.0.0.0 + i, TCP (churn_writer.c)
CHURN_BASE = 0x64000000  # 100.0.0.0 + j, UDP


@pytest.fixture(scope="session")
def churn_writer(tmp_path_factory) -> str:
    return str(build_c(TESTS_DIR / "churn_writer.c", tmp_path_factory.mktemp("churn") / "churn_writer"))


class Writer:
    """The churn_writer process in `run` mode, with its shared progress counter."""

    def __init__(self, exe: str, pin: Path, mode: str, live: int, start: int, ctr: Path, rate: int = 0):
        self.proc = subprocess.Popen([exe, "run", str(pin), mode, str(live), str(start), str(ctr), str(rate)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"writer did not start: {line!r} {self.proc.stderr.read()}"
        self._f = open(ctr, "r+b")
        self._mm = mmap.mmap(self._f.fileno(), 4096)
        self.result: dict[str, float] = {}

    def next_id(self) -> int:
        """Every churn id below this was inserted (and, in window mode, every id below
        next_id - LIVE was deleted) before this call returned."""
        return struct.unpack_from("<Q", self._mm, 0)[0]

    def stop(self) -> dict[str, float]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        self._mm.close()
        self._f.close()
        assert self.proc.returncode == 0, err
        self.result = {k: float(v) for k, v in (p.split("=") for p in out.split())}
        return self.result


def run_tool(exe: str, *args: str) -> None:
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def snapshot_ids(exe: str, pin: Path, out: Path) -> pl.DataFrame:
    """Every key in the map right now (independent batch walk in C) as (proto, a)."""
    run_tool(exe, "snap", pin, out)
    buf = out.read_bytes()
    return ids_from_raw(pl.DataFrame({"key": [buf[i:i + 16] for i in range(0, len(buf), 16)]},
                                     schema={"key": pl.Binary}))


def ids_from_raw(df: pl.DataFrame) -> pl.DataFrame:
    k = pl.col("key")
    return df.select(
        proto=k.bin.slice(0, 4).bin.reinterpret(dtype=pl.UInt32, endianness="little").cast(pl.Int64),
        a=k.bin.slice(4, 4).bin.reinterpret(dtype=pl.UInt32, endianness="big").cast(pl.Int64),
        b=k.bin.slice(8, 4).bin.reinterpret(dtype=pl.UInt32, endianness="big").cast(pl.Int64),
        pa=k.bin.slice(12, 2).bin.reinterpret(dtype=pl.UInt16, endianness="little").cast(pl.Int64),
        pb=k.bin.slice(14, 2).bin.reinterpret(dtype=pl.UInt16, endianness="little").cast(pl.Int64),
    )


def ids_from_decoded(df: pl.DataFrame) -> pl.DataFrame:
    def ip(c: str) -> pl.Expr:
        o = pl.col(c).str.split(".").list.eval(pl.element().cast(pl.Int64))
        return o.list.get(0) * 2**24 + o.list.get(1) * 2**16 + o.list.get(2) * 2**8 + o.list.get(3)

    return df.select(proto=pl.col("proto").cast(pl.Int64), a=ip("addr_a"), b=ip("addr_b"),
                     pa=pl.col("port_a").cast(pl.Int64), pb=pl.col("port_b").cast(pl.Int64))


def split_ids(ids: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(stable ids, churn ids, keys matching neither pattern)."""
    stable = ids.filter((pl.col("proto") == 6) & (pl.col("b") == 0x0AC80001) & (pl.col("pa") == 40000)
                        & (pl.col("pb") == 443)).select(id=pl.col("a") - STABLE_BASE)
    churn = ids.filter((pl.col("proto") == 17) & (pl.col("b") == 0xAC100001) & (pl.col("pa") == 53)
                       & (pl.col("pb") == 53)).select(id=pl.col("a") - CHURN_BASE)
    return stable, churn, ids.height - stable.height - churn.height


def dump_ids(pin: Path, method: str, threads: int, layout: str) -> tuple[pl.DataFrame, object]:
    m = ctscope.open_map(pin, layout=layout)
    d = m.dump(method=method, threads=threads)
    df = dump_to_polars(d)
    ids = ids_from_raw(df) if layout == "raw" else ids_from_decoded(df)
    return ids, d


def check_no_duplicates(ids: pl.DataFrame, what: str) -> None:
    dups = ids.filter(ids.is_duplicated())
    assert dups.height == 0, f"{what}: {dups.height} rows are duplicate keys, e.g. {dups.head(3).to_dicts()}"


@pytest.fixture
def watchdog():
    """A hung dump must fail the run, not stall CI."""
    faulthandler.dump_traceback_later(600, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# (method, threads, layout): batch with one and two range workers, next_key; mostly raw
# (exact key bytes), some decoded through the CT layout.
HASH_PLAN = ([("batch", 1, "raw"), ("batch", 2, "raw"), ("batch", 2, "v3"), ("batch", 1, "raw"),
              ("batch", 2, "raw"), ("next_key", 1, "raw")] * 5)
LRU_PLAN = ([("batch", 1, "raw"), ("batch", 2, "raw"), ("batch", 2, "v4"), ("batch", 1, "v4"),
             ("batch", 2, "raw"), ("batch", 1, "raw"), ("next_key", 1, "raw")] * 3)[:20]
assert len(HASH_PLAN) + len(LRU_PLAN) == 50
assert {p[0] for p in HASH_PLAN} == {p[0] for p in LRU_PLAN} == {"batch", "next_key"}


def test_churn_hash_sliding_window(make_map, churn_writer, tmp_path, watchdog):
    m = make_map("cali_v4_ct3", bpfkernel.HASH, 16, 88, MAX_ENTRIES, bpfkernel.BPF_F_NO_PREALLOC)
    run_tool(churn_writer, "fill", m.path, "s", 0, STABLE)
    run_tool(churn_writer, "fill", m.path, "c", 0, LIVE)
    w = Writer(churn_writer, m.path, "window", LIVE, LIVE, tmp_path / "ctr", HASH_RATE)
    failures: list[str] = []
    checked = {"batch": 0, "next_key": 0}  # dumps whose "existed throughout" churn set was non-empty
    try:
        for n, (method, threads, layout) in enumerate(HASH_PLAN):
            what = f"dump {n} ({method}, threads={threads}, layout={layout})"
            j0 = w.next_id()
            ids, d = dump_ids(m.path, method, threads, layout)
            j1 = w.next_id()
            assert j1 > j0, f"{what}: the writer made no progress during the dump"
            check_no_duplicates(ids, what)
            stable, churn, other = split_ids(ids)
            assert other == 0, f"{what}: {other} keys that were never written"
            assert stable.height == STABLE and stable["id"].min() == 0 and stable["id"].max() == STABLE - 1, \
                f"{what}: {STABLE - stable.height} stable keys missing"
            # Inserted before the end, not deleted before the start.
            lo, hi = j0 - LIVE, j1
            bad = churn.filter((pl.col("id") < lo) | (pl.col("id") > hi))
            assert bad.height == 0, f"{what}: {bad.height} churn keys outside [{lo}, {hi}]"
            # Present at the start and still present at the end: must be in the dump.
            must = pl.DataFrame({"id": pl.int_range(j1 - LIVE + 1, j0, eager=True)})
            missing = must.join(churn, on="id", how="anti")
            assert missing.height == 0, f"{what}: {missing.height} keys that existed throughout are missing"
            checked[method] += must.height > 0
            assert d.method == method
            if method == "next_key" and d.stats["duplicates_dropped"] > 1000:
                failures.append(f"{what}: {d.stats}")
    finally:
        res = w.stop()
    print(f"\nchurn writer (hash, sliding window): {res['rate']:,.0f} inserts+deletes/s "
          f"({res['ops']:,.0f} ops in {res['secs']:.1f} s)")
    assert res["failures"] == 0, f"writer: {res['failures']:.0f} failed updates/deletes"
    assert res["rate"] >= MIN_WRITER_RATE, (
        f"precondition: writer reached only {res['rate']:,.0f} ops/s (< {MIN_WRITER_RATE:,}); machine overloaded?")
    # A restart of the key-by-key walk resumes where it was, not from the first key: a
    # handful of duplicates per dump, not a re-walk of the map.
    assert not failures, "next_key re-walked the map after restarts: " + "; ".join(failures)
    # The churn-key check must have had keys to check in most dumps of each method.
    assert checked["batch"] >= 20 and checked["next_key"] >= 2, checked


def test_churn_full_lru_evicting(make_map, churn_writer, tmp_path, watchdog):
    m = make_map("cali_v4_ct4", bpfkernel.LRU_HASH, 16, 88, MAX_ENTRIES)
    run_tool(churn_writer, "fill", m.path, "c", 0, MAX_ENTRIES)  # fills it: the LRU evicts from here on
    w = Writer(churn_writer, m.path, "insert", 0, MAX_ENTRIES, tmp_path / "ctr", LRU_RATE)
    try:
        # A snapshot taken after one dump is also taken before the next.
        _, after, _ = split_ids(snapshot_ids(churn_writer, m.path, tmp_path / "snap"))
        for n, (method, threads, layout) in enumerate(LRU_PLAN):
            what = f"LRU dump {n} ({method}, threads={threads}, layout={layout})"
            before = after
            ids, d = dump_ids(m.path, method, threads, layout)
            j1 = w.next_id()
            _, after, _ = split_ids(snapshot_ids(churn_writer, m.path, tmp_path / "snap"))
            check_no_duplicates(ids, what)
            stable, churn, other = split_ids(ids)
            assert other == 0 and stable.height == 0, f"{what}: keys that were never written"
            assert churn["id"].max() <= j1, f"{what}: a key not yet inserted when the dump ended"
            # The map is full and evicting: a dump sees nearly max_entries entries.
            assert churn.height > 0.9 * MAX_ENTRIES, f"{what}: only {churn.height} entries in a full map"
            kept = before.join(after, on="id", how="semi")
            # Enough survivors for the check below to mean something (the writer evicts fast).
            assert kept.height > 50_000, f"{what}: only {kept.height} keys survived the dump"
            missing = kept.join(churn, on="id", how="anti")
            assert missing.height == 0, (
                f"{what}: {missing.height} keys present before and after the dump are missing from it")
            assert d.method == method
    finally:
        res = w.stop()
    evicting_rate = res["rate"]
    print(f"\nchurn writer (full LRU): {evicting_rate:,.0f} inserts/s, each evicting one entry "
          f"({res['ops']:,.0f} inserts in {res['secs']:.1f} s)")
    assert res["failures"] == 0
    # Each insert into the full LRU is also an eviction (a delete): count both.
    assert 2 * evicting_rate >= MIN_WRITER_RATE, f"precondition: writer reached only {evicting_rate:,.0f} inserts/s"
