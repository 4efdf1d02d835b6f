#!/usr/bin/env python3
"""Dump throughput against the raw BPF_MAP_LOOKUP_BATCH floor, measured in one run.

    sudo python benches/bench_dump.py                 # 1,000,000-entry synthetic v4 map
    sudo python benches/bench_dump.py --entries 10000000 --threads 1,2,4
    sudo python benches/bench_dump.py --pin /sys/fs/bpf/tc/globals/cali_v4_ct4

The same rows as `ctscope bench` (python/ctscope/bench.py): every figure from a fresh
process unless labelled [warm], median and best of --repeat (>= 5), each a ratio to the
single-threaded C floor measured in the same run on the same map (`synth --profile node`
unless --pin). Goals (issue 12, 1M entries, 2 cores): to_polars <= 1.0 x; select(dport,
proto) <= 0.6 x; a 1 %-selective filter <= 0.6 x; stats work <= 1.0 x; dump -o parquet
<= 2.5 x; a 3-column projection's peak memory <= 0.2 x the full to_polars'.
"""

from __future__ import annotations

import argparse
import json

from ctscope import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pin", help="existing map (default: synthesise one in a private bpffs)")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-bpftool", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with bench.map_to_measure(args.pin, args.entries) as pin:
        r = bench.run(pin, args.repeat, not args.no_bpftool)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(bench.format_report(r))


if __name__ == "__main__":
    main()
