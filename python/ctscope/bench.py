"""Throughput benchmark: ctscope against the raw batch-lookup floor, measured in the
same run on the same map (machines are shared and noisy; only ratios travel)."""

from __future__ import annotations

import json
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
def map_to_measure(pin: str | None, entries: int, ipv6: bool = False) -> Iterator[str]:
    """`pin` itself, or (without one) a synthetic Calico CT map (v4 layout, IPv4 or with
    `ipv6` IPv6) of `entries` entries (`synth --profile node`: README "Performance") pinned
    in a private bpffs for the duration of the block."""
    if pin:
        yield pin
        return
    from ctscope.bpffs import private_bpffs
    from ctscope.cli.synth import synth
    from ctscope.pins import default_ct_pin

    with private_bpffs() as fs:
        path = default_ct_pin(fs, ipv6=ipv6)  # nothing is pinned yet: the newest CT pin name
        t = time.perf_counter()
        synth(str(path), entries, profile="node", ipv6=ipv6)
        print(f"synthesised {entries:,} {'IPv6' if ipv6 else 'IPv4'} entries in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
        yield str(path)


def build_c_floor(workdir: Path) -> Path | None:
    """Compile the C floor (a bare BPF_MAP_LOOKUP_BATCH loop) if a C compiler exists."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc or not C_FLOOR_SRC.exists():
        return None
    exe = workdir / "raw_floor"
    r = subprocess.run([cc, "-O2", "-o", str(exe), str(C_FLOOR_SRC)], capture_output=True, text=True)
    return exe if r.returncode == 0 else None


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


# Library calls, each in a fresh process (cold: the process has faulted in nothing yet).
# Prints the call's own seconds (interpreter start and imports excluded), the rows it gave
# and the peak RSS it added.
_LIB_CHILD = r"""
import json, sys, time
import polars as pl, ctscope
from ctscope.bench import _hwm_mb, arrow_nbytes
pin, what = sys.argv[1], sys.argv[2]
m = ctscope.open_map(pin)
stats = ctscope.stats  # the module loads here, with the others: start-up, not the work timed below
calls = {
    "to_polars": lambda: m.to_polars(),
    "to_polars_t1": lambda: m.to_polars(threads=1),
    "select_dport_proto": lambda: ctscope.scan_map(m).select("dport", "proto").collect(),
    "select_3": lambda: ctscope.scan_map(m).select("dport", "proto", "type").collect(),
    "where_dport_443": lambda: ctscope.scan_map(m).filter(pl.col("dport") == 443).collect(),
    "stats": lambda: stats(pin),
}
if what == "to_polars_warm":
    m.to_polars()  # the same call once before: malloc keeps its memory, the timed one reuses it
    what = "to_polars"
base = _hwm_mb()
t = time.perf_counter()
r = calls[what]()
secs = time.perf_counter() - t
rows = r.height if isinstance(r, pl.DataFrame) else r.get("total_entries")
out = {"secs": secs, "rows": rows, "peak_delta_mb": _hwm_mb() - base}
if what == "to_polars" and len(sys.argv) > 3:
    out["arrow_mb"] = arrow_nbytes(m) / 2**20
print(json.dumps(out))
"""

# (label, kind, what): kind lib = a library call's own time in a fresh process; cli = a whole
# command, process start to exit; warm = measured after the same call in the same process.
ROWS = [
    ("open_map().to_polars()", "lib", "to_polars"),
    ("to_polars(threads=1)", "lib", "to_polars_t1"),
    ("to_polars() [warm]", "warm", "to_polars_warm"),
    ('scan_map().select("dport", "proto")', "lib", "select_dport_proto"),
    ('scan_map().filter(dport == 443) [~1 %]', "lib", "where_dport_443"),
    ("ctscope.stats(pin) (work, no interpreter start)", "lib", "stats"),
    ("$ ctscope dump -o X.parquet", "cli", "dump_parquet"),
    ("$ ctscope stats", "cli", "stats"),
    ("$ ctscope top --by dport", "cli", "top"),
    ("$ ctscope expired", "cli", "expired"),
    ('$ ctscope dump --where "dport = 443"', "cli", "dump_where"),
]


def _cli_args(what: str, pin: str, tmpd: Path) -> list[str]:
    return {
        "dump_parquet": ["dump", pin, "-o", str(tmpd / "dump.parquet")],
        "stats": ["stats", pin],
        "top": ["top", pin, "--by", "dport"],
        "expired": ["expired", pin],
        "dump_where": ["dump", pin, "--where", "dport = 443"],
    }[what]


def _lib_once(pin: str, what: str, extra: tuple[str, ...] = ()) -> dict:
    p = subprocess.run([sys.executable, "-c", _LIB_CHILD, pin, what, *extra], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed: {p.stderr.strip()[-400:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# Rows also measured on an IPv6 map (the same profile, IPv6 addresses), against its own floor.
ROWS_V6 = [
    ("IPv6 map: open_map().to_polars()", "lib", "to_polars"),
    ('IPv6 map: scan_map().select("dport", "proto")', "lib", "select_dport_proto"),
]


def run(pin: str, repeat: int = 5, bpftool: bool = True, threads: tuple[int, ...] = (),  # noqa: ARG001
        pin6: str | None = None) -> dict:
    """Every row `repeat` times, round-robin with the C floor (a noisy neighbour slows all
    rows alike); each run in a fresh process; median and best of each, and each as a ratio
    to the median / best C floor of the same run. With `pin6` (an IPv6 map), ROWS_V6 too,
    each against that map's own floor."""
    from statistics import median

    from ctscope import open_map
    from ctscope._native import raw_read

    m = open_map(pin)
    out: dict = {"pin": pin, "max_entries": m.info.max_entries, "layout": m.info.layout, "repeat": repeat,
                 "rows": {}}
    entries, _ = raw_read(pin, 4096, "batch")
    out["entries"] = entries
    with tempfile.TemporaryDirectory(prefix="ctscope-bench-") as tmp:
        tmpd = Path(tmp)
        exe = build_c_floor(tmpd)
        times: dict[str, list[float]] = {"floor": [], "floor6": []}
        peaks: dict[str, list[float]] = {}

        def floor(p: str) -> float:
            if exe:
                r = subprocess.run([str(exe), p, "4096"], capture_output=True, text=True, check=True)
                return float(r.stdout.split()[1])
            return raw_read(p, 4096, "batch")[1]

        for _ in range(repeat):
            times["floor"].append(floor(pin))
            if pin6:
                times["floor6"].append(floor(pin6))
                for label, _kind, what in ROWS_V6:
                    res = _lib_once(pin6, what)
                    times.setdefault(label, []).append(res["secs"])
                    peaks.setdefault(label, []).append(res["peak_delta_mb"])
            for label, kind, what in ROWS:
                if kind == "cli":
                    secs, rss = _timed_cli(_cli_args(what, pin, tmpd))
                else:
                    res = _lib_once(pin, what)
                    secs, rss = res["secs"], res["peak_delta_mb"]
                times.setdefault(label, []).append(secs)
                peaks.setdefault(label, []).append(rss)
        out["floor"] = "c" if exe else "rust"
        fmed, fbest = median(times["floor"]), min(times["floor"])
        out["floor_median_s"], out["floor_best_s"] = fmed, fbest
        for label, kind, _what in ROWS:
            t = times[label]
            out["rows"][label] = {
                "kind": kind, "median_s": median(t), "best_s": min(t),
                "median_x_floor": round(median(t) / fmed, 3), "best_x_floor": round(min(t) / fbest, 3),
                # lib rows: peak RSS the call added; cli rows: the whole process's peak RSS
                "peak_mb": round(max(peaks[label]), 1),
            }
        if pin6:
            f6med, f6best = median(times["floor6"]), min(times["floor6"])
            out["v6"] = {"pin": pin6, "floor_median_s": f6med, "floor_best_s": f6best, "rows": {}}
            for label, kind, _what in ROWS_V6:
                t = times[label]
                out["v6"]["rows"][label] = {
                    "kind": kind, "median_s": median(t), "best_s": min(t),
                    "median_x_floor": round(median(t) / f6med, 3), "best_x_floor": round(min(t) / f6best, 3),
                    "peak_mb": round(max(peaks[label]), 1)}
        full = _lib_once(pin, "to_polars", ("arrow",))
        three = _lib_once(pin, "select_3")
        out["arrow_mb"] = round(full["arrow_mb"], 1)
        out["to_polars_peak_mb"] = round(full["peak_delta_mb"], 1)
        out["select_3_peak_mb"] = round(three["peak_delta_mb"], 1)
        out["select_3_peak_ratio"] = round(three["peak_delta_mb"] / full["peak_delta_mb"], 3)
        out["parquet_mb"] = round((tmpd / "dump.parquet").stat().st_size / 2**20, 1)
        if bpftool and shutil.which("bpftool"):
            t = time.perf_counter()
            with open(tmpd / "bpftool.json", "wb") as f:
                subprocess.run(["bpftool", "-j", "map", "dump", "pinned", pin], stdout=f, check=True)
            secs = time.perf_counter() - t
            out["bpftool_s"] = secs
            out["bpftool_x_floor"] = round(secs / fmed, 2)
    return out


def format_report(r: dict) -> str:
    lines = [f"ctscope bench: {r['entries']:,} entries in {r['pin']} (layout {r['layout']}); every figure from a "
             f"fresh process unless [warm]; median and best of {r['repeat']}",
             f"  floor ({r['floor']} BPF_MAP_LOOKUP_BATCH loop, one thread, no decoding): median "
             f"{r['floor_median_s']:.3f} s, best {r['floor_best_s']:.3f} s",
             f"  {'':48s} {'median':>8s} {'best':>8s}  {'× floor (med/best)':>18s}  peak MiB"]
    for label, row in r["rows"].items():
        lines.append(f"  {label:48s} {row['median_s']:8.3f} {row['best_s']:8.3f}  "
                     f"{row['median_x_floor']:8.2f} / {row['best_x_floor']:<7.2f}  {row['peak_mb']:8.1f}")
    if "v6" in r:
        v6 = r["v6"]
        lines.append(f"  IPv6 map's own floor: median {v6['floor_median_s']:.3f} s, best {v6['floor_best_s']:.3f} s")
        for label, row in v6["rows"].items():
            lines.append(f"  {label:48s} {row['median_s']:8.3f} {row['best_s']:8.3f}  "
                         f"{row['median_x_floor']:8.2f} / {row['best_x_floor']:<7.2f}  {row['peak_mb']:8.1f}")
    lines.append(f"  memory: to_polars() +{r['to_polars_peak_mb']} MiB peak for {r['arrow_mb']} MiB of Arrow; "
                 f"3-column projection +{r['select_3_peak_mb']} MiB ({r['select_3_peak_ratio']} x)")
    lines.append(f"  (lib rows: peak RSS the call added; $ rows: the whole process's peak RSS); parquet file "
                 f"{r['parquet_mb']} MiB")
    if "bpftool_s" in r:
        lines.append(f"  bpftool -j map dump (one run): {r['bpftool_s']:.2f} s = {r['bpftool_x_floor']} x floor")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_report(run(sys.argv[1])))
