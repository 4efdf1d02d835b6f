"""`ctscope bench --write`: `clean` against its floor on a synthetic map, in one run.

Floor: one C `BPF_MAP_LOOKUP_BATCH` pass over the map (raw_floor.c, or the Rust one
without a compiler) plus one raw `BPF_MAP_DELETE_BATCH` of the keys Felix's rules judge
expired, no checks. Then the map is put back as it was and `clean --yes --force` runs in
this process (scan, decode, judge, backup written and fsynced, one
BPF_MAP_LOOKUP_AND_DELETE_ELEM per entry). benches/bench_act.py does the same with an
exactly half-expired map and also times `get`.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import polars as pl

from ctscope import _native, act
from ctscope._native import LiveMap, monotonic_ns


def run(pin: str, repeat: int = 3) -> dict:
    from ctscope.analysis.expiry import with_expiry
    from ctscope.analysis.timeouts import Timeouts
    from ctscope.bench import build_c_floor

    live = LiveMap(pin, writable=True)
    original = live.snapshot()
    t = Timeouts.resolve(None)
    floors, runs = [], []
    with tempfile.TemporaryDirectory(prefix="ctscope-bench-write-") as tmp:
        exe = build_c_floor(Path(tmp))
        for i in range(repeat):
            now = monotonic_ns()
            rows, _ = _native.snapshot_rows(original, "auto", now)
            idx = with_expiry(pl.DataFrame(rows).with_row_index("_i"), t, now).filter(pl.col("expired")) \
                .select("_i").collect()["_i"].to_list()
            doomed = _native.snapshot_take(original, idx)
            if exe:
                dump_s = float(subprocess.run([str(exe), pin, "4096"], capture_output=True, text=True,
                                              check=True).stdout.split()[1])
            else:
                dump_s = _native.raw_read(pin, 4096, "batch")[1]
            del_s = _native.raw_delete_batch(live, doomed)
            floors.append(dump_s + del_s)
            live.write(original)
            t0 = time.perf_counter()
            res = act.clean(pin, yes=True, force=True, backup_directory=str(Path(tmp) / f"b{i}"), say=lambda s: None)
            runs.append((time.perf_counter() - t0, res))
            live.write(original)
    best_t, best = min(runs, key=lambda r: r[0])
    return {"pin": pin, "entries": original.count, "expired": best.deleted + best.refreshed,
            "floor_s": round(min(floors), 4), "clean_s": round(best_t, 4), "phases": best.timings,
            "ratio_to_floor": round(best_t / min(floors), 2)}


def format_report(r: dict) -> str:
    return (f"clean: {r['entries']:,} entries, {r['expired']:,} expired\n"
            f"  floor (C batch dump + BPF_MAP_DELETE_BATCH of the expired keys)  {r['floor_s']:.3f} s\n"
            f"  clean --yes (scan, judge, backup, race-safe deletes)             {r['clean_s']:.3f} s  "
            f"= {r['ratio_to_floor']} x floor\n"
            "  phases: " + ", ".join(f"{k} {v:.3f} s" for k, v in r["phases"].items()))
