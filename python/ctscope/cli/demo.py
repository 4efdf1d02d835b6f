"""`ctscope demo`: the main job on an embedded default, for a first look."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.console import Console

from ctscope.cli.app import app

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "ct-sample.parquet"


@app.command("demo")
def demo(
    entries: int = typer.Option(1_000_000, "--entries", min=1, max=2**32 - 1, help="Synthetic entries to write and dump."),
    sample: bool = typer.Option(False, "--sample", help="Use the shipped sample snapshot even when root."),
) -> None:
    """Synthesise a Calico CT map in a private bpffs, dump it, and summarise it.
    Without root, summarise the sample snapshot shipped with ctscope instead."""
    if sample or os.geteuid() != 0:
        if not sample:
            Console(stderr=True).print(
                "[yellow]not root: creating BPF maps needs root (CAP_BPF + CAP_SYS_ADMIN to mount a bpffs);"
                f" showing the sample snapshot shipped with ctscope ({SAMPLE.name}) instead[/]")
        _summary(str(SAMPLE), live=False)
        return
    import ctscope
    from ctscope._native import raw_read
    from ctscope.bpffs import private_bpffs
    from ctscope.cli.synth import synth
    from ctscope.pins import CT_PIN_NAMES, GLOBALS

    with private_bpffs() as fs:
        pin = fs / GLOBALS / CT_PIN_NAMES[4][0]
        print(f"private bpffs at {fs}: writing {entries:,} synthetic Calico v4 CT entries ...")
        t = time.perf_counter()
        synth(str(pin), entries)
        print(f"  pinned {pin.name} in {time.perf_counter() - t:.2f} s")
        m = ctscope.open_map(pin)
        _, floor = raw_read(str(pin), 4096, "batch")
        t = time.perf_counter()
        df = m.to_polars()
        secs = time.perf_counter() - t
        print(f"  dumped {df.height:,} entries into polars in {secs:.3f} s "
              f"({df.height / secs / 1e6:.2f} M entries/s; raw batch-lookup floor {floor:.3f} s, {secs / floor:.2f} x)")
        _summary(str(pin), live=True)


def _summary(source: str, live: bool) -> None:
    """The same figures `ctscope stats SOURCE` prints, and where to go next."""
    from ctscope.analysis.stats import stats
    from ctscope.cli.stats import format_stats

    print(format_stats(stats(source)))
    if live:
        print("On a Calico node try: ctscope maps · ctscope dump --where \"proto = 6 AND dport = 443\" · "
              "ctscope stats · ctscope expired · ctscope check")
    else:
        print(f"Try: ctscope top {source} --by service · ctscope expired {source} · ctscope report {source} -o r.html")
