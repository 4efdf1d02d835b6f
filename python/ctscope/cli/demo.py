"""`ctscope demo`: the main job on an embedded default, for a first look."""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from ctscope.cli.app import app

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "ct-sample.parquet"


@app.command("demo")
def demo(
    entries: int = typer.Option(1_000_000, "--entries", help="Synthetic entries to write and dump."),
    sample: bool = typer.Option(False, "--sample", help="Use the shipped sample snapshot even when root."),
) -> None:
    """Synthesise a Calico CT map in a private bpffs, dump it, and summarise it.
    Without root, summarise the sample snapshot shipped with ctscope instead."""
    con = Console()
    if sample or os.geteuid() != 0:
        if not sample:
            con.print("[yellow]not root: creating BPF maps needs root (CAP_BPF + CAP_SYS_ADMIN to mount a bpffs);"
                      f" showing the sample snapshot shipped with ctscope ({SAMPLE.name}) instead[/]")
        df = pl.read_parquet(SAMPLE)
        _summary(con, df, f"sample snapshot {SAMPLE}", None)
        return
    import ctscope
    from ctscope._native import raw_read
    from ctscope.bpffs import private_bpffs
    from ctscope.cli.synth import synth

    with private_bpffs() as fs:
        pin = fs / "tc" / "globals" / "cali_v4_ct4"
        con.print(f"private bpffs at {fs}: writing {entries:,} synthetic Calico v4 CT entries ...")
        t = time.perf_counter()
        synth(str(pin), entries)
        con.print(f"  pinned {pin.name} in {time.perf_counter() - t:.2f} s")
        m = ctscope.open_map(pin)
        _, floor = raw_read(str(pin), 4096, "batch")
        t = time.perf_counter()
        df = m.to_polars()
        secs = time.perf_counter() - t
        con.print(f"  dumped {df.height:,} entries into polars in {secs:.3f} s "
                  f"({df.height / secs / 1e6:.2f} M entries/s; raw batch-lookup floor {floor:.3f} s, "
                  f"{secs / floor:.2f} x)")
        _summary(con, df, f"{pin} ({m.info.map_type}, max_entries {m.info.max_entries:,})", m.info.max_entries)


def _summary(con: Console, df: pl.DataFrame, title: str, max_entries: int | None) -> None:
    t = Table(title=title, show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("entries", f"{df.height:,}")
    if max_entries:
        t.add_row("fill", f"{df.height / max_entries:.1%}")
    conns = df.filter(pl.col("type") != "nat_fwd")
    t.add_row("connections (NAT fwd stubs not counted)", f"{conns.height:,}")
    for proto, n in conns.group_by("proto").len().sort("proto").iter_rows():
        t.add_row(f"  proto {proto}", f"{n:,}")
    for state, n in conns.filter(pl.col("tcp_state").is_not_null()).group_by("tcp_state").len().sort("tcp_state").iter_rows():
        t.add_row(f"  TCP {state}", f"{n:,}")
    t.add_row("NAT connections", f"{df.filter(pl.col('type') == 'nat_rev').height:,}")
    t.add_row("idle > 1 h", f"{df.filter(pl.col('idle_s') > 3600).height:,}")
    con.print(t)
    bytes_ = (pl.col("a2b_bytes") + pl.col("b2a_bytes")).sum().alias("bytes")
    top = (conns.group_by("proto", "dport").agg(pl.len().alias("entries"), bytes_)
           .sort("entries", descending=True).head(5))
    con.print("busiest destination ports:")
    con.print(top)
    svc = (df.filter(pl.col("type") == "nat_rev").group_by("orig_ip", "orig_port")
           .agg(pl.len().alias("connections"), bytes_).sort("connections", descending=True).head(5))
    con.print("busiest services (NAT, by original destination):")
    con.print(svc)
