#!/usr/bin/env python3
"""One `watch`/`serve` refresh against `to_polars()` of the same map, and serve's memory.

    sudo python benches/bench_live.py                       # 1,000,000-entry synthetic v4 map
    sudo python benches/bench_live.py --entries 512000 --repeat 5
    sudo python benches/bench_live.py --cgroup 1024         # + serve's peak under a 1 GiB memory cgroup

(a) open_map().to_polars(): the dump alone; (b) one steady-state refresh (analysis/live.py
Watcher.refresh with the previous generation held: dump, Felix's rules, counts, the join with
the previous generation, busiest flows); (c) the same with --events (every changed row
materialised). Wall time best of --repeat, interleaved round-robin, and CPU time (all threads)
of that best run; the ratios to (a) are what travels between machines. Goal: (b) <= 1.3 x (a).
--cgroup MiB: `ctscope serve` in a memory cgroup of that size (v1 or v2), scraped 6 times with
--min-interval 0 (each scrape one read): peak usage, and whether it was OOM-killed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# As given (polars prepends its own defaults to _RJEM_MALLOC_CONF when imported).
ALLOCATOR_ENV = {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "_RJEM_MALLOC_CONF")}

import ctscope  # noqa: E402
from ctscope.analysis.live import Watcher  # noqa: E402
from ctscope.bench import map_to_measure


def best_of(fns: dict, repeat: int) -> dict[str, tuple[float, float]]:
    """(best wall, CPU of that run) per function, interleaved round-robin."""
    out: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            if k not in out or wall < out[k][0]:
                out[k] = (wall, cpu)
    return out


def measure(pin: str, repeat: int) -> dict:
    m = ctscope.open_map(pin)
    w, we = Watcher(pin), Watcher(pin, events=True)
    w.refresh()
    we.refresh()  # both hold a previous generation: every timed refresh is a steady-state one
    res = best_of({"a": lambda: m.to_polars(), "b": w.refresh, "c": we.refresh}, repeat)
    a = res["a"][0]
    return {"pin": pin, "entries": w.prev.summary["total_entries"], "repeat": repeat,
            **{f"{k}_s": round(v[0], 4) for k, v in res.items()},
            **{f"{k}_cpu_s": round(v[1], 4) for k, v in res.items()},
            "b_ratio": round(res["b"][0] / a, 3), "c_ratio": round(res["c"][0] / a, 3),
            "b_cpu_ratio": round(res["b"][1] / res["a"][1], 3)}


def serve_in_cgroup(pin: str, mib: int, reads: int = 6) -> dict:
    """serve's peak memory over `reads` reads inside a memory cgroup of `mib` MiB."""
    v1 = Path("/sys/fs/cgroup/memory")
    cg = (v1 if v1.is_dir() else Path("/sys/fs/cgroup")) / f"ctscope-bench-{os.getpid()}"
    cg.mkdir()
    try:
        if v1.is_dir():
            (cg / "memory.limit_in_bytes").write_text(str(mib << 20))
        else:
            (cg / "memory.max").write_text(str(mib << 20))
        port = 29769
        p = subprocess.Popen([sys.executable, "-m", "ctscope", "serve", pin, "--listen", f"127.0.0.1:{port}",
                              "--min-interval", "0"], stderr=subprocess.DEVNULL,
                             preexec_fn=lambda: (cg / "cgroup.procs").write_text(str(os.getpid())))
        good = 0
        deadline = time.monotonic() + 600
        while p.poll() is None and time.monotonic() < deadline:  # its first read happens before it listens
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=600).read()
                break
            except OSError:
                time.sleep(0.5)
        for _ in range(reads):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=600).read().decode()
                good += "ctscope_last_read_success 1.0" in text
            except OSError:
                break
        alive = p.poll() is None
        p.terminate()
        p.wait()
        peak = (cg / ("memory.max_usage_in_bytes" if v1.is_dir() else "memory.peak")).read_text()
        return {"limit_mib": mib, "good_reads": good, "survived": alive, "peak_mib": int(peak) >> 20,
                "allocator_env": ALLOCATOR_ENV}
    finally:
        cg.rmdir()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--pin", help="Measure this pinned map instead of a synthetic one.")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cgroup", type=int, metavar="MiB", help="Also run serve in a memory cgroup of MiB.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with map_to_measure(args.pin, args.entries) as pin:
        r = measure(pin, args.repeat)
        if args.cgroup:
            r["serve_cgroup"] = serve_in_cgroup(pin, args.cgroup)
    if args.json:
        print(json.dumps(r, indent=1))
        return
    print(f"{r['entries']:,} entries, best of {r['repeat']} (wall; CPU of all threads)")
    print(f"(a) to_polars()               {r['a_s']:.3f} s  cpu {r['a_cpu_s']:.3f} s  1.00")
    print(f"(b) watch/serve refresh       {r['b_s']:.3f} s  cpu {r['b_cpu_s']:.3f} s  {r['b_ratio']:.2f} x (a)  "
          f"(CPU {r['b_cpu_ratio']:.2f} x)  goal <= 1.3")
    print(f"(c) watch --events refresh    {r['c_s']:.3f} s  cpu {r['c_cpu_s']:.3f} s  {r['c_ratio']:.2f} x (a)")
    if "serve_cgroup" in r:
        s = r["serve_cgroup"]
        print(f"serve in a {s['limit_mib']} MiB cgroup: peak {s['peak_mib']} MiB, {s['good_reads']} good reads, "
              f"{'survived' if s['survived'] else 'OOM-killed'} (allocator env: {s['allocator_env']})")


if __name__ == "__main__":
    main()
