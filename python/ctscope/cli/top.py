"""`ctscope top`: the largest sources, destinations, pairs, services, ports or protocols."""

from __future__ import annotations

from typing import Optional

import typer

from ctscope.analysis.top import BY, METRICS, top as compute_top
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app


@app.command()
def top(
    source: Optional[str] = io.Source,
    by: str = typer.Option("src", "--by", help="|".join(BY)),
    metric: str = typer.Option("entries", "--metric", help="|".join(METRICS)),
    n: int = typer.Option(10, "-n", min=1, max=2**31 - 1, help="How many rows."),
    where: Optional[str] = io.Where,
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table|json|ndjson|csv|parquet|arrow"),
    output: Optional[str] = io.Output,
    now_ns: Optional[int] = io.NowNs,
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """Top groups of entries by entries, bytes or packets (`service` = NAT'd service IP:port;
    `pair` leaves out NAT fwd stubs: a NAT'd connection counts once, by its rev entry)."""
    fmt = io.frame_format(fmt, output)
    df = compute_top(source, by=by, metric=metric, n=n, where=where, **io.source_kw(bpffs, ipv6, layout, now_ns))
    io.emit_frame(df, fmt, output)
