"""Throughput benchmark: ctscope against the raw batch-lookup floor, measured in the
same run on the same map (machines are shared and noisy; only ratios travel)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

C_FLOOR_SRC = Path(__file__).with_name("raw_floor.c")


@contextmanager
def map_to_measure(pin: str | None, entries: int) -> Iterator[str]:
    """`pin` itself, or (without one) a synthetic Calico v4 CT map of `entries` entries
    pinned in a private bpffs for the duration of the block."""
    if pin:
        yield pin
        return
    from ctscope.bpffs import private_bpffs
    from ctscope.cli.synth import synth

    with private_bpffs() as fs:
        path = fs / "tc" / "globals" / "cali_v4_ct4"
        t = time.perf_counter()
        synth(str(path), entries)
        print(f"synthesised {entries:,} entries in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        yield str(path)


def build_c_floor(workdir: Path) -> Path | None:
    """Compile the C floor (a bare BPF_MAP_LOOKUP_BATCH loop) if a C compiler exists."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc or not C_FLOOR_SRC.exists():
        return None
    exe = workdir / "raw_floor"
    r = subprocess.run([cc, "-O2", "-o", str(exe), str(C_FLOOR_SRC)], capture_output=True, text=True)
    return exe if r.returncode == 0 else None


def _best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def arrow_nbytes(m) -> int:
    """Bytes of Arrow buffers a full dump of `m` decodes to, counted from the buffers
    themselves (polars' estimated_size leaves out the 16-byte views of string columns).
    Reads the map again: meant for static (synthetic) maps."""
    d = m.dump()
    total = 0
    while (b := d.next_batch()) is not None:
        total += b.nbytes
    return total


def _hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# Runs `ctscope ARGS...` in a child and reports its own peak RSS on the last stderr line.
_CLI_CHILD = r"""
import sys
from ctscope.bench import _hwm_mb
from ctscope.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    if e.code:
        raise
print(f"HWM {_hwm_mb()}", file=sys.stderr)
"""


def _timed_cli(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of `ctscope ARGS` in a fresh process."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CLI_CHILD, *args], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"ctscope {' '.join(args)} failed: {p.stderr.strip()[-300:]}")
    return secs, float(p.stderr.strip().splitlines()[-1].split()[1])


_POLARS_CHILD = r"""
import json, sys, time, ctscope
from ctscope.bench import _hwm_mb, arrow_nbytes
m = ctscope.open_map(sys.argv[1])
base = _hwm_mb()
t = time.perf_counter(); df = m.to_polars(); secs = time.perf_counter() - t
peak = _hwm_mb() - base
print(json.dumps({"secs": secs, "rows": df.height, "arrow_mb": arrow_nbytes(m) / 2**20, "peak_delta_mb": peak}))
"""


def run(pin: str, repeat: int = 3, bpftool: bool = True, threads: tuple[int, ...] = (1, 2, 4)) -> dict:
    from ctscope import open_map
    from ctscope._native import raw_read

    m = open_map(pin)
    out: dict = {"pin": pin, "max_entries": m.info.max_entries, "layout": m.info.layout, "repeat": repeat}
    entries, _ = raw_read(pin, 4096, "batch")
    out["entries"] = entries
    with tempfile.TemporaryDirectory(prefix="ctscope-bench-") as tmp:
        tmpd = Path(tmp)
        exe = build_c_floor(tmpd)
        if exe:
            def c_floor() -> float:
                r = subprocess.run([str(exe), pin, "4096"], capture_output=True, text=True, check=True)
                return float(r.stdout.split()[1])
            out["a_c_floor_s"] = _best(c_floor, repeat)
        out["a_rust_floor_s"] = _best(lambda: raw_read(pin, 4096, "batch")[1], repeat)
        floor = out.get("a_c_floor_s", out["a_rust_floor_s"])
        out["floor"] = "c" if "a_c_floor_s" in out else "rust"

        def polars_once() -> float:
            t = time.perf_counter()
            m.to_polars()
            return time.perf_counter() - t
        # The process's first call is measured apart: its result's ~300 MiB come fresh from
        # the kernel (page faults), while later calls reuse memory malloc kept. The best-of
        # rows below are all warm, so that the thread counts compare like with like.
        out["b0_first_call_s"] = polars_once()
        out["b_to_polars_s"] = _best(polars_once, repeat)
        for t in threads:
            out[f"b{t}_to_polars_threads{t}_s"] = _best(lambda: _time(lambda: m.to_polars(threads=t)), repeat)
        child = subprocess.run([sys.executable, "-c", _POLARS_CHILD, pin], capture_output=True, text=True, check=True)
        mem = json.loads(child.stdout)
        out["b_arrow_mb"] = round(mem["arrow_mb"], 1)
        out["b_peak_delta_mb"] = round(mem["peak_delta_mb"], 1)
        out["b_mem_ratio"] = round(mem["peak_delta_mb"] / mem["arrow_mb"], 2) if mem["arrow_mb"] else None

        pq = tmpd / "dump.parquet"
        cli = ["dump", pin, "--format", "parquet", "-o", str(pq)]
        secs = []
        rss = 0.0
        for _ in range(repeat):
            s, r = _timed_cli(cli)
            secs.append(s)
            rss = max(rss, r)
        out["c_dump_parquet_s"] = min(secs)
        out["c_peak_rss_mb"] = round(rss, 1)
        out["c_parquet_mb"] = round(pq.stat().st_size / 2**20, 1)

        if bpftool and shutil.which("bpftool"):
            t = time.perf_counter()
            with open(tmpd / "bpftool.json", "wb") as f:
                subprocess.run(["bpftool", "-j", "map", "dump", "pinned", pin], stdout=f, check=True)
            out["d_bpftool_json_s"] = time.perf_counter() - t

    n = entries or 1
    for key in [k for k in list(out) if k.endswith("_s")]:
        out[key[:-2] + "_x_floor"] = round(out[key] / floor, 3)
        out[key[:-2] + "_entries_per_s"] = round(n / out[key]) if out[key] else None
    if "d_bpftool_json_s" in out:
        out["d_over_b"] = round(out["d_bpftool_json_s"] / out["b_to_polars_s"], 1)
    return out


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def format_report(r: dict) -> str:
    floor = r.get("a_c_floor_s", r["a_rust_floor_s"])
    lines = [f"ctscope bench: {r['entries']:,} entries in {r['pin']} (layout {r['layout']}), best of {r['repeat']}",
             f"  floor ({r['floor']} BPF_MAP_LOOKUP_BATCH loop, no decoding): {floor:.3f} s  "
             f"({r['entries'] / floor / 1e6:.2f} M entries/s)"]
    rows = [("a  rust raw batch loop", "a_rust_floor_s"), ("b  to_polars(), first call (cold)", "b0_first_call_s"),
            ("b  open_map().to_polars()", "b_to_polars_s")]
    rows += [(f"b  to_polars(threads={m[1]})", m[0]) for k in r if (m := re.fullmatch(r"b\d+_to_polars_threads(\d+)_s", k))]
    rows += [("c  ctscope dump --format parquet", "c_dump_parquet_s"), ("d  bpftool -j map dump", "d_bpftool_json_s")]
    for label, key in rows:
        if key in r:
            lines.append(f"  {label:34s} {r[key]:8.3f} s  {r[key] / floor:7.2f} x floor  "
                         f"{r['entries'] / r[key] / 1e6:6.2f} M/s")
    lines.append(f"  to_polars memory: peak +{r['b_peak_delta_mb']} MiB for {r['b_arrow_mb']} MiB of Arrow "
                 f"({r['b_mem_ratio']} x)")
    lines.append(f"  dump parquet: peak RSS {r['c_peak_rss_mb']} MiB (whole process), file {r['c_parquet_mb']} MiB")
    if "d_over_b" in r:
        lines.append(f"  bpftool / to_polars: {r['d_over_b']} x")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_report(run(sys.argv[1])))
