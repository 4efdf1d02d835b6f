#!/usr/bin/env python3
"""Scale: 10,000,000 entries (v4 LRU, key 16 B / value 88 B) against 1,000,000.

    sudo python benches/bench_scale.py                       # 1M and 10M, best of 2
    sudo python benches/bench_scale.py --sizes 1000000,5000000,10000000 --repeat 3 --json

For each size it synthesises a Calico-shaped ct4 map in a private bpffs (max_entries
1.25 x entries) and measures, each in a fresh child process:

* `ctscope dump PIN -o FILE.parquet`: wall time and peak RSS (the child's VmHWM at exit);
* `open_map(PIN).to_polars()`: wall time, the frame's Arrow size (its buffers' bytes) and
  the memory the call added (peak RSS during the call minus RSS just before it);
* `ctscope stats|metrics|top --by dport|expired SOURCE` on the live map and on a parquet
  snapshot of it (the file `ctscope dump -o` wrote): wall time, peak RSS (issue 12's limits
  at 10M, for both: stats, metrics, top <= 1 GiB; expired <= 1.5 GiB).

Maps are `synth --profile node` (README "Performance").

Then reports the time ratio of the largest to the smallest size against the entry ratio
(linear growth: per-entry ratio ~1.0; the dump's ratio leaves out the CLI's fixed
start-up time, measured separately). Limits (issue 5): dump -o parquet peak RSS < 1 GiB
at 10M; to_polars added memory <= 2 x Arrow size; issue 12's above. Exits 1 if a limit is missed.
Needs root (CAP_BPF + CAP_SYS_ADMIN for the private bpffs) and ~3 GiB of kernel memory
for the 10M map (12.5M preallocated LRU elements). Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

GiB = 1 << 30

# Peak RSS is read as VmHWM (the high-water mark of the process's own address space):
# ru_maxrss is not usable here, because on exec Linux carries the spawning process's
# peak over into the child's (this script's own RSS after synthesising 10M entries).
CLI_WITH_HWM = textwrap.dedent("""
    import atexit, os, runpy, sys
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                with open(os.environ["CTSCOPE_HWM_FILE"], "w") as f:
                    f.write(str(int(line.split()[1]) * 1024))
    atexit.register(hwm)
    sys.argv = ["ctscope"] + sys.argv[1:]
    runpy.run_module("ctscope", run_name="__main__")
""")

TO_POLARS = textwrap.dedent("""
    import json, sys, time
    import ctscope
    def rss(field="VmRSS:"):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    m = ctscope.open_map(sys.argv[1])
    m.to_polars(limit=1000)  # warm-up: imports and first-use allocations
    before = rss()
    t = time.perf_counter()
    df = m.to_polars()
    secs = time.perf_counter() - t
    peak = rss("VmHWM:")
    from ctscope.bench import arrow_nbytes
    print(json.dumps({"rows": df.height, "secs": secs, "arrow_bytes": arrow_nbytes(m),
                      "rss_before": before, "peak_rss": peak, "rss_after": rss()}))
""")


def dump_parquet(pin: str, out: Path) -> dict:
    hwm = out.with_suffix(".hwm")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CLI_WITH_HWM, "dump", pin, "-o", str(out)],
                       env=dict(os.environ, CTSCOPE_HWM_FILE=str(hwm)), capture_output=True, text=True)
    secs = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"ctscope dump failed ({r.returncode}): {r.stderr.strip()}")
    peak = int(hwm.read_text())
    hwm.unlink()
    return {"secs": round(secs, 3), "peak_rss": peak, "file_bytes": out.stat().st_size}


ANALYSIS = {"stats": ["stats"], "metrics": ["metrics"], "top": ["top", "--by", "dport"], "expired": ["expired"]}
# Issue 12's limits at 10M entries (live map and its parquet snapshot alike).
ANALYSIS_LIMIT = {"stats": GiB, "metrics": GiB, "top": GiB, "expired": 1.5 * GiB}


def analysis_cmd(pin: str, args: list[str], out_dir: Path) -> dict:
    """`ctscope ARGS SOURCE` (a live pin or a snapshot file): wall time and peak RSS, output discarded."""
    hwm = out_dir / "analysis.hwm"
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CLI_WITH_HWM, *args, pin],
                       env=dict(os.environ, CTSCOPE_HWM_FILE=str(hwm)), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"ctscope {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    peak = int(hwm.read_text())
    hwm.unlink()
    return {"secs": round(secs, 3), "peak_rss": peak}


def startup_secs() -> float:
    """The CLI's fixed cost (interpreter, imports), best of 3: subtracted for the growth ratio."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ctscope.cli"], check=True)
        best = min(best, time.perf_counter() - t)
    return best


def to_polars(pin: str) -> dict:
    out = subprocess.run([sys.executable, "-c", TO_POLARS, pin], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"to_polars child failed: {out.stderr.strip()}")
    r = json.loads(out.stdout)
    r["added"] = r["peak_rss"] - r["rss_before"]
    r["x_arrow"] = round(r["added"] / r["arrow_bytes"], 3)
    r["secs"] = round(r["secs"], 3)
    return r


def measure(pin: str, entries: int, repeat: int, out_dir: Path, analysis: list[str]) -> dict:
    dumps = []
    snap = out_dir / f"scale-{entries}.parquet"  # the last dump's file: the snapshot the analysis reads
    for i in range(repeat):
        f = out_dir / f"scale-{entries}-{i}.parquet"
        dumps.append(dump_parquet(pin, f))
        f.replace(snap)
    pols = [to_polars(pin) for _ in range(repeat)]
    best = min(dumps, key=lambda d: d["secs"])
    live = {name: analysis_cmd(pin, ANALYSIS[name], out_dir) for name in analysis}
    snapshot = {name: analysis_cmd(str(snap), ANALYSIS[name], out_dir) for name in analysis}
    snap.unlink()
    return {
        **{f"{name}_s": a["secs"] for name, a in live.items()},
        **{f"{name}_peak_rss": a["peak_rss"] for name, a in live.items()},
        **{f"{name}_snapshot_s": a["secs"] for name, a in snapshot.items()},
        **{f"{name}_snapshot_peak_rss": a["peak_rss"] for name, a in snapshot.items()},
        "entries": entries,
        "dump_parquet_s": best["secs"],
        "dump_parquet_peak_rss": max(d["peak_rss"] for d in dumps),
        "parquet_bytes": best["file_bytes"],
        "to_polars_s": min(p["secs"] for p in pols),
        "to_polars_rows": pols[0]["rows"],
        "arrow_bytes": pols[0]["arrow_bytes"],
        "to_polars_added_rss": max(p["added"] for p in pols),
        "to_polars_x_arrow": max(p["x_arrow"] for p in pols),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000", help="entry counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out-dir", help="where the parquet files go (default: a temp dir; removed)")
    ap.add_argument("--analysis", default=",".join(ANALYSIS),
                    help="analysis commands to measure, on the live map and on its snapshot")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    analysis = [a for a in args.analysis.split(",") if a]
    for a in analysis:
        if a not in ANALYSIS:
            ap.error(f"--analysis {a!r}: expected some of {', '.join(ANALYSIS)}")

    from ctscope.bpffs import private_bpffs
    from ctscope.cli.synth import synth

    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp, private_bpffs() as fs:
        for n in sizes:
            pin = fs / "tc" / "globals" / "cali_v4_ct4"
            t = time.perf_counter()
            info = synth(str(pin), n, profile="node")
            print(f"synthesised {info['entries']:,} entries (max_entries {info['max_entries']:,}) "
                  f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            r = measure(str(pin), n, args.repeat, Path(tmp), analysis)
            r["live_entries"] = info["entries"]
            results.append(r)
            print(f"  {n:,}: dump -o parquet {r['dump_parquet_s']:.2f} s, peak RSS "
                  f"{r['dump_parquet_peak_rss'] / 2**20:,.0f} MiB; to_polars {r['to_polars_s']:.2f} s, "
                  f"+{r['to_polars_added_rss'] / 2**20:,.0f} MiB for {r['arrow_bytes'] / 2**20:,.0f} MiB Arrow",
                  file=sys.stderr)
            os.unlink(pin)  # frees the map before the next size
    small, large = results[0], results[-1]
    rows_ratio = large["to_polars_rows"] / max(small["to_polars_rows"], 1)
    startup = startup_secs()
    summary = {
        "results": results,
        "cli_startup_s": round(startup, 3),
        "entries_ratio": round(rows_ratio, 3),
        "dump_time_ratio": round((large["dump_parquet_s"] - startup) / (small["dump_parquet_s"] - startup), 3),
        "to_polars_time_ratio": round(large["to_polars_s"] / small["to_polars_s"], 3),
    }
    summary["dump_per_entry_ratio"] = round(summary["dump_time_ratio"] / rows_ratio, 3)
    summary["to_polars_per_entry_ratio"] = round(summary["to_polars_time_ratio"] / rows_ratio, 3)
    checks = {
        f"dump -o parquet peak RSS < 1 GiB at {large['entries']:,}": large["dump_parquet_peak_rss"] < GiB,
        "to_polars added memory <= 2 x Arrow size (every size)": all(r["to_polars_x_arrow"] <= 2.0 for r in results),
        **{f"{name} ({where}) peak RSS <= {lim / GiB:g} GiB at {large['entries']:,}": large[f"{name}{suffix}"] <= lim
           for name, lim in ANALYSIS_LIMIT.items() if name in analysis
           for where, suffix in (("live", "_peak_rss"), ("snapshot", "_snapshot_peak_rss"))},
    }
    summary["checks"] = checks
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{'entries':>12} {'dump s':>8} {'peak RSS MiB':>13} {'parquet MiB':>12} {'to_polars s':>12} "
              f"{'Arrow MiB':>10} {'added MiB':>10} {'x Arrow':>8}")
        for r in results:
            print(f"{r['to_polars_rows']:>12,} {r['dump_parquet_s']:>8.2f} {r['dump_parquet_peak_rss'] / 2**20:>13,.0f} "
                  f"{r['parquet_bytes'] / 2**20:>12,.0f} {r['to_polars_s']:>12.2f} {r['arrow_bytes'] / 2**20:>10,.0f} "
                  f"{r['to_polars_added_rss'] / 2**20:>10,.0f} {r['to_polars_x_arrow']:>8.2f}")
        print(f"time ratio {large['to_polars_rows']:,} / {small['to_polars_rows']:,} entries (x{rows_ratio:.2f}): "
              f"dump -o parquet x{summary['dump_time_ratio']:.2f} without the CLI's {startup:.2f} s start-up "
              f"(per entry x{summary['dump_per_entry_ratio']:.2f}), "
              f"to_polars x{summary['to_polars_time_ratio']:.2f} (per entry x{summary['to_polars_per_entry_ratio']:.2f})")
        for r in results:
            for where, sfx in (("live map", ""), ("snapshot", "_snapshot")):
                print(f"{r['to_polars_rows']:>12,} {where}: " + ", ".join(
                    f"{name} {r[name + sfx + '_s']:.1f} s / {r[name + sfx + '_peak_rss'] / 2**20:,.0f} MiB"
                    for name in analysis))
        for what, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}  {what}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
