#!/usr/bin/env python3
"""`ctscope clean` and `ctscope get` against their floors, measured in one run.

    sudo python benches/bench_act.py                       # clean: 1,000,000 entries, half expired; get: 10,000,000
    sudo python benches/bench_act.py --clean-entries 200000 --get-entries 1000000 --repeat 2

clean — a v4 (LRU) map of N UDP entries, every other one idle for 120 s (expired under Felix's
60 s UDP timeout), the rest fresh. Floor: what any deletion of those entries must at least do:
one raw C `BPF_MAP_LOOKUP_BATCH` pass over the map (python/ctscope/raw_floor.c) plus one raw
`BPF_MAP_DELETE_BATCH` of exactly the expired keys (no checks). Measured: `ctscope.act.clean`
with --yes --force in-process (scan, decode, Felix's rules in polars, NAT partners, backup
written and fsynced, one BPF_MAP_LOOKUP_AND_DELETE_ELEM per entry), with its phases, and the
whole `ctscope clean` command once (process start to exit). The map is refilled before each run.

get — a synthetic v4 map of M entries: median over many existing connections of the direct
lookup inside the process (`ctscope.lookup`: open pin, build keys, lookups, NAT follow, decode)
and of the whole `ctscope get` command (process start to exit); `bpftool map lookup` of the same
key for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import bpfkernel  # noqa: E402  (the tests' own bpf(2) calls: create and fill without ctscope)

from ctscope import _native, act  # noqa: E402
from ctscope._native import LiveMap, monotonic_ns  # noqa: E402
from ctscope.bench import build_c_floor  # noqa: E402
from ctscope.bpffs import private_bpffs  # noqa: E402

S = 1_000_000_000


def half_expired(n: int, now: int) -> tuple[bytes, bytes, int]:
    keys, vals = bytearray(), bytearray()
    b = bytes([10, 255, 0, 1])
    tail = bytes(88 - 24)
    expired = 0
    for i in range(n):
        a = (0x0A000000 | (i >> 8 << 8 | (i & 255))).to_bytes(4, "big") if i < 1 << 24 else i.to_bytes(4, "big")
        keys += struct.pack("<I4s4sHH", 17, a, b, 1024 + (i >> 24), 53)
        old = i % 2 == 1
        expired += old
        vals += struct.pack("<QQB7x", 0, now - (120 * S if old else 0), 0) + tail
    return bytes(keys), bytes(vals), expired


def fill(fd: int, keys: bytes, vals: bytes, n: int) -> None:
    step = 8192
    for i in range(0, n, step):
        m = min(step, n - i)
        bpfkernel.update_batch(fd, keys[i * 16:(i + m) * 16], vals[i * 88:(i + m) * 88], m)


def bench_clean(n: int, repeat: int, tmp: Path) -> dict:
    with private_bpffs() as fs:
        pin = fs / "tc" / "globals" / "cali_v4_ct4"
        fd = bpfkernel.create_pinned(pin, bpfkernel.LRU_HASH, 16, 88, int(n * 1.25), 0, b"cali_v4_ct4")
        exe = build_c_floor(tmp)
        floors, runs = [], []
        for r in range(repeat + 1):  # the last run is the whole CLI command
            now = monotonic_ns()
            keys, vals, n_exp = half_expired(n, now)
            fill(fd, keys, vals, n)
            live = LiveMap(str(pin), writable=True)
            snap = live.snapshot()
            rows, _ = _native.snapshot_rows(snap, "auto", now + S)
            import polars as pl

            idx = pl.DataFrame(rows).with_row_index("_i").filter(pl.col("last_seen_ns") < now - 60 * S)["_i"].to_list()
            doomed = _native.snapshot_take(snap, idx)
            assert doomed.count == n_exp
            if exe:
                out = subprocess.run([str(exe), str(pin), "4096"], capture_output=True, text=True, check=True).stdout
                dump_s = float(out.split()[1])
            else:
                dump_s = _native.raw_read(str(pin), 4096, "batch")[1]
            del_s = _native.raw_delete_batch(live, doomed)
            floors.append({"c_dump_s": dump_s, "delete_batch_s": del_s, "total_s": dump_s + del_s})
            fill(fd, keys, vals, n)  # put the expired half back
            bdir = tmp / f"backups{r}"
            if r < repeat:
                t = time.perf_counter()
                res = act.clean(str(pin), yes=True, force=True, backup_directory=str(bdir), say=lambda s: None)
                runs.append({"total_s": time.perf_counter() - t, "deleted": res.deleted, "phases": res.timings})
                assert res.deleted == n_exp, (res.deleted, n_exp)
            else:
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "ctscope", "clean", str(pin), "--yes", "--force", "--backup-dir",
                                str(bdir)], check=True, capture_output=True)
                cli_s = time.perf_counter() - t
            for f in bdir.glob("*.arrow"):
                f.unlink()
        os.close(fd)
    f = min(floors, key=lambda x: x["total_s"])
    best = min(runs, key=lambda x: x["total_s"])
    return {"entries": n, "expired": n // 2, "floor": {k: round(v, 4) for k, v in f.items()},
            "clean_s": round(best["total_s"], 4), "clean_phases": best["phases"], "clean_cli_s": round(cli_s, 4),
            "ratio_to_floor": round(best["total_s"] / f["total_s"], 2),
            "ratio_cli_to_floor": round(cli_s / f["total_s"], 2)}


def bench_get(n: int, samples: int, cli_samples: int) -> dict:
    from ctscope.cli.synth import synth
    from ctscope.ctmap import open_map

    with private_bpffs() as fs:
        pin = fs / "tc" / "globals" / "cali_v4_ct4"
        t = time.perf_counter()
        synth(str(pin), n)
        synth_s = time.perf_counter() - t
        df = open_map(pin).to_polars(limit=samples)
        tuples = [(r["proto"], f"{r['src']}:{r['sport']}", f"{r['dst']}:{r['dport']}") for r in df.iter_rows(named=True)]
        lat = []
        for proto, s, d in tuples:
            t = time.perf_counter()
            got = act.lookup(str(proto), s, d, pin)
            lat.append(time.perf_counter() - t)
            assert got.height >= 1
        cli = []
        for proto, s, d in tuples[:cli_samples]:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ctscope", "get", str(proto), s, d, str(pin)], check=True,
                           capture_output=True)
            cli.append(time.perf_counter() - t)
        bt = []
        for proto, s, d in tuples[:cli_samples]:
            _fam, keys = act.tuple_keys(str(proto), s, d)
            k = keys[0][0]
            t = time.perf_counter()
            subprocess.run(["bpftool", "map", "lookup", "pinned", str(pin), "key", "hex", *[f"{x:02x}" for x in k]],
                           capture_output=True)
            bt.append(time.perf_counter() - t)
    return {"entries": n, "synth_s": round(synth_s, 1), "samples": len(lat),
            "lookup_median_ms": round(statistics.median(lat) * 1e3, 3),
            "get_command_median_ms": round(statistics.median(cli) * 1e3, 1),
            "bpftool_lookup_median_ms": round(statistics.median(bt) * 1e3, 1) if bt else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean-entries", type=int, default=1_000_000)
    ap.add_argument("--get-entries", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-get", action="store_true")
    ap.add_argument("--skip-clean", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory(prefix="ctscope-bench-act-") as tmp:
        if not a.skip_clean:
            out["clean"] = bench_clean(a.clean_entries, a.repeat, Path(tmp))
        if not a.skip_get:
            out["get"] = bench_get(a.get_entries, 200, 10)
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    if "clean" in out:
        c = out["clean"]
        print(f"clean: {c['entries']:,} entries, {c['expired']:,} expired, best of {a.repeat}")
        print(f"  floor   {c['floor']['total_s']:.3f} s  (C batch dump {c['floor']['c_dump_s']:.3f} s + "
              f"BPF_MAP_DELETE_BATCH {c['floor']['delete_batch_s']:.3f} s)")
        print(f"  clean   {c['clean_s']:.3f} s in-process = {c['ratio_to_floor']} x floor; whole command "
              f"{c['clean_cli_s']:.3f} s = {c['ratio_cli_to_floor']} x")
        print("  phases  " + ", ".join(f"{k} {v:.3f} s" for k, v in c["clean_phases"].items()))
    if "get" in out:
        g = out["get"]
        print(f"get: {g['entries']:,} entries, {g['samples']} connections")
        print(f"  lookup (in-process) median {g['lookup_median_ms']} ms; whole `ctscope get` median "
              f"{g['get_command_median_ms']} ms; bpftool map lookup median {g['bpftool_lookup_median_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
