#!/usr/bin/env python3
"""Soak: dump a churning map again and again for N minutes and check every dump.

    sudo python benches/soak.py --minutes 30                    # 1M HASH, sliding window
    sudo python benches/soak.py --minutes 30 --lru              # full LRU, evicting
    sudo python benches/soak.py --minutes 5 --rate 0 --entries 2000000   # writer flat out

A C writer (tests/churn_writer.c, built with gcc) inserts and deletes while this process
dumps with batch (1 and 2 range workers) and next_key in turn, raw and decoded. Every dump
is checked as in tests/test_churn.py: no error, no duplicate key, every key that existed
for the whole dump present, nothing that never existed. It also tracks this process's
RSS after each dump (a leak shows as steady growth) and the per-method dump times.
Prints a summary (and JSON with --json); exits 1 on any failed dump.
Needs root and `pip install -e '.[test]'` (it reuses the test helpers).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import polars as pl  # noqa: E402

import bpfkernel  # noqa: E402
from test_churn import (CHURN_BASE, Writer, check_no_duplicates, dump_ids, run_tool,  # noqa: E402,F401
                        snapshot_ids, split_ids)

PLAN = [("batch", 1, "raw"), ("batch", 2, "raw"), ("batch", 2, "v4"), ("next_key", 1, "raw"), ("batch", 1, "v4")]


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--entries", type=int, default=1_000_000, help="max_entries of the map")
    ap.add_argument("--lru", action="store_true", help="a full LRU map the writer evicts from (else HASH)")
    ap.add_argument("--rate", type=int, default=200_000, help="writer target ops/s (0 = as fast as it can)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("soak: needs gcc")
    from ctscope.bpffs import private_bpffs

    times: dict[str, list[float]] = collections.defaultdict(list)
    failures: list[str] = []
    rss: list[float] = []
    dumps = 0
    with tempfile.TemporaryDirectory() as tmp, private_bpffs() as fs:
        tmp = Path(tmp)
        exe = tmp / "churn_writer"
        subprocess.run([gcc, "-O2", "-o", str(exe), str(ROOT / "tests" / "churn_writer.c")], check=True)
        exe = str(exe)
        n = args.entries
        if args.lru:
            pin = fs / "tc" / "globals" / "cali_v4_ct4"
            fd = bpfkernel.create_pinned(pin, bpfkernel.LRU_HASH, 16, 88, n, 0, "cali_v4_ct4")
            run_tool(exe, "fill", pin, "c", 0, n)
            w = Writer(exe, pin, "insert", 0, n, tmp / "ctr", args.rate)
            stable_n, live = 0, 0
        else:
            pin = fs / "tc" / "globals" / "cali_v4_ct3"
            fd = bpfkernel.create_pinned(pin, bpfkernel.HASH, 16, 88, n, bpfkernel.BPF_F_NO_PREALLOC, "cali_v4_ct3")
            stable_n, live = int(n * 0.3), int(n * 0.5)
            run_tool(exe, "fill", pin, "s", 0, stable_n)
            run_tool(exe, "fill", pin, "c", 0, live)
            w = Writer(exe, pin, "window", live, live, tmp / "ctr", args.rate)
        end = time.monotonic() + args.minutes * 60
        after = split_ids(snapshot_ids(exe, pin, tmp / "snap"))[1] if args.lru else None
        try:
            while time.monotonic() < end:
                method, threads, layout = PLAN[dumps % len(PLAN)]
                layout = layout if layout == "raw" or args.lru else "v3"
                what = f"dump {dumps} ({method}, threads={threads}, {layout})"
                dumps += 1
                try:
                    j0 = w.next_id()
                    t = time.perf_counter()
                    ids, _ = dump_ids(pin, method, threads, layout)
                    times[f"{method}/{threads}/{layout}"].append(time.perf_counter() - t)
                    j1 = w.next_id()
                    check_no_duplicates(ids, what)
                    stable, churn, other = split_ids(ids)
                    assert other == 0, f"{what}: {other} keys never written"
                    if args.lru:
                        before = after
                        after = split_ids(snapshot_ids(exe, pin, tmp / "snap"))[1]
                        kept = before.join(after, on="id", how="semi")
                        must = kept
                        assert churn["id"].max() <= j1, f"{what}: a key inserted after the dump"
                    else:
                        assert stable.height == stable_n, f"{what}: {stable_n - stable.height} stable keys missing"
                        bad = churn.filter((pl.col("id") < j0 - live) | (pl.col("id") > j1))
                        assert bad.height == 0, f"{what}: {bad.height} keys that could not exist"
                        must = pl.DataFrame({"id": pl.int_range(j1 - live + 1, j0, eager=True)})
                    missing = must.join(churn, on="id", how="anti")
                    assert missing.height == 0, f"{what}: {missing.height} keys that existed throughout missing"
                except Exception as e:  # noqa: BLE001 - a soak reports every failure and goes on
                    failures.append(f"{what}: {type(e).__name__}: {e}")
                    traceback.print_exc()
                rss.append(rss_mib())
                if dumps % 10 == 0:
                    print(f"{dumps} dumps, {len(failures)} failed, RSS {rss[-1]:.0f} MiB, writer at id {w.next_id():,}",
                          file=sys.stderr)
        finally:
            res = w.stop()
            import os

            os.close(fd)
    third = max(len(rss) // 3, 1)
    summary = {
        "minutes": args.minutes, "map": "lru" if args.lru else "hash", "max_entries": args.entries,
        "dumps": dumps, "failed": len(failures), "failures": failures[:20],
        "writer_ops_per_s": round(res["rate"]), "writer_failures": int(res["failures"]),
        "rss_mib_first_third_max": round(max(rss[:third]), 1) if rss else None,
        "rss_mib_last_third_max": round(max(rss[-third:]), 1) if rss else None,
        "dump_seconds": {k: {"n": len(v), "median": round(statistics.median(v), 3), "max": round(max(v), 3)}
                         for k, v in sorted(times.items())},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"soak: {dumps} dumps in {args.minutes:g} min on a {args.entries:,}-entry "
              f"{summary['map']} map, writer {summary['writer_ops_per_s']:,} ops/s: {len(failures)} failed")
        print(f"RSS after dumps: first third max {summary['rss_mib_first_third_max']} MiB, "
              f"last third max {summary['rss_mib_last_third_max']} MiB")
        for k, v in summary["dump_seconds"].items():
            print(f"  {k:<22} n={v['n']:<4} median {v['median']:.2f} s  max {v['max']:.2f} s")
        for f in failures[:20]:
            print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
