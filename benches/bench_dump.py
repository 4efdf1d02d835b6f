#!/usr/bin/env python3
"""Dump throughput against the raw BPF_MAP_LOOKUP_BATCH floor, measured in one run.

    sudo python benches/bench_dump.py                 # 1,000,000-entry synthetic v4 map
    sudo python benches/bench_dump.py --entries 10000000 --threads 1,2,4
    sudo python benches/bench_dump.py --pin /sys/fs/bpf/tc/globals/cali_v4_ct4

Prints (a) the C floor and a Rust raw loop, (b) open_map().to_polars() for each thread
count, (c) `ctscope dump --format parquet` (time, peak RSS), (d) `bpftool -j map dump`,
as seconds, entries/s and ratios to (a). Goals: (b) <= 1.25 x (a) with one thread and
<= 1.0 x with two; (d)/(b) >= 30; to_polars peak memory < 2 x its Arrow size.
"""

from __future__ import annotations

import argparse
import json

from ctscope import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pin", help="existing map (default: synthesise one in a private bpffs)")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--threads", default="1,2,4", help="thread counts for (b)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-bpftool", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with bench.map_to_measure(args.pin, args.entries) as pin:
        r = bench.run(pin, args.repeat, not args.no_bpftool, tuple(int(x) for x in args.threads.split(",")))
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(bench.format_report(r))


if __name__ == "__main__":
    main()
