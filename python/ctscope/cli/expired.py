"""`ctscope expired`: entries Felix's expiry rules would delete (facts §6)."""

from __future__ import annotations

import sys
from typing import Optional

import polars as pl
import typer

from ctscope.analysis.expiry import annotate, timeouts_for
from ctscope.analysis.sources import INTERNAL, open_source, where_filter
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app

TABLE_COLUMNS = ["proto", "src", "sport", "dst", "dport", "type", "tcp_state", "idle_s", "expired", "expire_reason"]


@app.command()
def expired(
    source: Optional[str] = io.Source,
    all_entries: bool = typer.Option(False, "--all", help="Every entry, with `expired` and `expire_reason` columns."),
    timeouts: Optional[str] = io.Timeouts,
    felix_config: Optional[str] = io.FelixConfig,
    now_ns: Optional[int] = io.NowNs,
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table|json|ndjson|csv|parquet|arrow (default: from -o suffix, else table)."),
    output: Optional[str] = io.Output,
    where: Optional[str] = io.Where,
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="At most N rows."),
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """List entries Felix would expire now (or, with --all, every entry and its verdict).

    A NAT fwd entry is judged by its NAT rev entry; without one it is expired. Ages are
    relative to the dump (live: now) or --now-ns."""
    fmt = io.frame_format(fmt, output)
    src = open_source(source, **io.source_kw(bpffs, ipv6, layout, now_ns))
    t = timeouts_for(src, timeouts, felix_config)
    lf = annotate(src, timeouts=t)
    cond = where_filter(where, lf)
    if cond is not None:
        lf = lf.filter(cond)
    rows = lf if all_entries else lf.filter(pl.col("expired"))
    if limit is not None:
        rows = rows.head(limit)
    with src.reading():
        counts, df = pl.collect_all([lf.select(pl.len(), pl.col("expired").sum()), rows.drop(INTERNAL)])
    total, n_expired = counts.row(0)
    print(f"ctscope: {n_expired:,} of {total:,} entries expired under Felix's rules ({t.spec()})", file=sys.stderr)
    if fmt == "table":
        cols = [c for c in TABLE_COLUMNS if c in df.columns and (all_entries or c != "expired")]
        if not src.single:
            cols = ["node", *cols]
        df = df.select(cols)
    io.emit_frame(df, fmt, output, metadata=src.snapshots[0].meta if src.single else None)
