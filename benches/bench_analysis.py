#!/usr/bin/env python3
"""`stats` and `expired` against the dump alone, measured in one run on the same map.

    sudo python benches/bench_analysis.py                  # 1,000,000-entry synthetic v4 map
    sudo python benches/bench_analysis.py --entries 5000000
    sudo python benches/bench_analysis.py --pin /sys/fs/bpf/tc/globals/cali_v4_ct4

Live: (a) open_map().to_polars() — the dump alone; (b) ctscope.stats(pin); (c)
ctscope.expired(pin) (expired rows only) and (d) expired(pin, all=True) (every row with its
verdict). Snapshot: (e) pl.read_parquet() alone, (f) stats and (g) expired on the same file.
Also the analysis alone on a dump already in memory. Each figure is the best of --repeat
runs, interleaved round-robin; the ratios to (a) and (e) are what travels between machines.
Goal: analysis adds little to the dump (ratios close to 1).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl

import ctscope
from ctscope.bench import map_to_measure

TIMEOUTS = "TCPFinsSeen=30s"  # fixed: results independent of this host's sysctls


def best_of(fns: dict, repeat: int) -> dict[str, tuple[float, object]]:
    """Best time of each function, the functions interleaved round-robin so that a noisy
    neighbour slows all of them alike rather than one."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    out: dict[str, object] = {}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t)
    return {k: (min(v), out[k]) for k, v in times.items()}


def measure(pin: str, repeat: int) -> dict:
    from ctscope.analysis import open_source

    m = ctscope.open_map(pin)
    src = open_source(pin)  # one dump, analysed repeatedly: the cost of the analysis alone
    res = best_of({
        "a": lambda: m.to_polars(),
        "b": lambda: ctscope.stats(pin, timeouts=TIMEOUTS),
        "c": lambda: ctscope.expired(pin, timeouts=TIMEOUTS),
        "d": lambda: ctscope.expired(pin, timeouts=TIMEOUTS, all=True),
        "b_only": lambda: ctscope.stats(src, timeouts=TIMEOUTS),
        "c_only": lambda: ctscope.expired(src, timeouts=TIMEOUTS),
    }, repeat)
    a = res["a"][0]
    r: dict = {"pin": pin, "entries": res["a"][1].height}
    st, ex = res["b"][1], res["c"][1]
    r["live"] = {
        "a_dump_s": round(a, 4),
        "b_stats_s": round(res["b"][0], 4), "b_over_a": round(res["b"][0] / a, 3),
        "c_expired_s": round(res["c"][0], 4), "c_over_a": round(res["c"][0] / a, 3),
        "d_expired_all_s": round(res["d"][0], 4), "d_over_a": round(res["d"][0] / a, 3),
        "stats_analysis_only_s": round(res["b_only"][0], 4),
        "expired_analysis_only_s": round(res["c_only"][0], 4),
        "expired_rows": ex.height,
    }
    with tempfile.TemporaryDirectory() as tmp:
        snap = Path(tmp) / "snap.parquet"
        from ctscope.snapshot_dir import write_snapshot

        write_snapshot(pin, output=snap)
        res = best_of({
            "e": lambda: pl.read_parquet(snap),
            "f": lambda: ctscope.stats(str(snap), timeouts=TIMEOUTS),
            "g": lambda: ctscope.expired(str(snap), timeouts=TIMEOUTS),
        }, repeat)
        e = res["e"][0]
        r["snapshot"] = {
            "file_mb": round(snap.stat().st_size / 2**20, 1),
            "e_read_s": round(e, 4),
            "f_stats_s": round(res["f"][0], 4), "f_over_e": round(res["f"][0] / e, 3),
            "g_expired_s": round(res["g"][0], 4), "g_over_e": round(res["g"][0] / e, 3),
        }
    r["stats_figures"] = {k: st[k] for k in ("total_entries", "total_connections", "nat_connections", "expired")}
    return r


def report(r: dict) -> str:
    n = r["entries"]
    lv, sn = r["live"], r["snapshot"]
    rate = lambda s: f"{n / s / 1e6:5.2f} M entries/s"  # noqa: E731
    return "\n".join([
        f"{n:,} entries ({r['pin']})",
        f"live      (a) dump alone (to_polars)        {lv['a_dump_s']:7.3f} s  {rate(lv['a_dump_s'])}",
        f"          (b) stats                         {lv['b_stats_s']:7.3f} s  {lv['b_over_a']:.2f} x (a)",
        f"          (c) expired ({lv['expired_rows']:,} rows)       {lv['c_expired_s']:7.3f} s  {lv['c_over_a']:.2f} x (a)",
        f"          (d) expired --all                 {lv['d_expired_all_s']:7.3f} s  {lv['d_over_a']:.2f} x (a)",
        f"          analysis alone, on a dump in hand: stats {lv['stats_analysis_only_s']:.3f} s "
        f"({lv['stats_analysis_only_s'] / lv['a_dump_s']:.2f} x (a)), expired {lv['expired_analysis_only_s']:.3f} s "
        f"({lv['expired_analysis_only_s'] / lv['a_dump_s']:.2f} x (a))",
        f"snapshot  (e) read_parquet alone ({sn['file_mb']} MiB)  {sn['e_read_s']:7.3f} s",
        f"          (f) stats                         {sn['f_stats_s']:7.3f} s  {sn['f_over_e']:.2f} x (e)",
        f"          (g) expired                       {sn['g_expired_s']:7.3f} s  {sn['g_over_e']:.2f} x (e)",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pin", help="existing map (default: synthesise one in a private bpffs)")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with map_to_measure(args.pin, args.entries) as pin:
        r = measure(pin, args.repeat)
    print(json.dumps(r, indent=2) if args.json else report(r))


if __name__ == "__main__":
    main()
