"""`ctscope expired`: entries Felix's expiry rules would delete (facts §6)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Optional

import polars as pl
import typer

from ctscope import export
from ctscope.outfile import output_file
from ctscope.analysis.chunked import judged_chunks, open_chunked
from ctscope.analysis.expiry import EXPIRY_COLUMNS, judged_schema, timeouts_for
from ctscope.analysis.sources import INTERNAL, SNAP, needed_columns
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app

TABLE_COLUMNS = ["proto", "src", "sport", "dst", "dport", "type", "tcp_state", "idle_s", "expired", "expire_reason"]
# Held as categories: compact, and filtered string views would keep every chunk's buffers alive.
_TEXT = ["src", "dst", "type", "tcp_state", "expire_reason", "node"]


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
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0, max=2**63 - 1, help="At most N rows."),
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """List entries Felix would expire now (or, with --all, every entry and its verdict).

    A NAT fwd entry is judged by its NAT rev entry; without one it is expired. Ages are
    relative to the dump (live: now) or --now-ns."""
    fmt = io.frame_format(fmt, output)
    table = fmt == "table"
    # A table shows a few columns: a live pin decodes only those (and what judging and
    # --where read); the other formats carry every column.
    columns = needed_columns([*TABLE_COLUMNS[:-2], *EXPIRY_COLUMNS], where) if table else None
    src = open_chunked(source, columns=columns, **io.source_kw(bpffs, ipv6, layout, now_ns))
    t = timeouts_for(src, timeouts, felix_config)
    schema = pl.Schema({k: v for k, v in judged_schema(src, t).items() if k not in INTERNAL})
    counts = {"total": 0, "expired": 0, "rows": 0}

    def frames() -> Iterator[pl.DataFrame]:
        # Judged chunk by chunk (analysis.chunked): file outputs are written as rows arrive.
        # A table's column widths come from its first frame (one per snapshot), so a
        # snapshot's rows are held (only the table's columns, text columns as categories)
        # and handed over as one frame.
        held: list[pl.DataFrame] = []
        keep = None if columns is None else [*columns, "node", SNAP, "expired", "expire_reason"]
        for df in judged_chunks(src, t, columns=keep, where=where):
            counts["total"] += df.height
            counts["expired"] += int(df["expired"].sum())
            rows = df if all_entries else df.filter(pl.col("expired"))
            if limit is not None:
                rows = rows.head(max(limit - counts["rows"], 0))
            counts["rows"] += rows.height
            if table:
                if held and rows.height and held[-1][SNAP][0] != rows[SNAP][0]:
                    yield pl.concat(held, how="vertical_relaxed")
                    held = []
                if rows.height:
                    held.append(rows.select([c for c in [*TABLE_COLUMNS, "node", SNAP] if c in rows.columns])
                                .with_columns(pl.col(c).cast(pl.Categorical) for c in _TEXT if c in rows.columns))
                continue
            yield rows.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in schema.items()
                                    if c not in rows.columns).select(schema.names())
        if held:
            yield pl.concat(held, how="vertical_relaxed")

    # A live pin's metadata is complete once its chunks have been read (when a file's footer is written).
    meta = (lambda: src.snapshots[0].meta) if src.single else None
    if fmt == "table":
        # Streamed like dump's table (and formatted alike): a reader that goes away (`| head`)
        # stops the run at the next snapshot or row, not after every row has been rendered.
        cols = [c for c in TABLE_COLUMNS if all_entries or c != "expired"]
        cols = cols if src.single else ["node", *cols]
        if output is None:
            export.write_text(frames(), fmt, sys.stdout, schema, cols)
        else:
            with output_file(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
                export.write_text(frames(), fmt, f, schema, cols)
    elif fmt in ("parquet", "arrow"):
        kv = (lambda _n: {"ctscope": json.dumps(meta())}) if meta else None
        if output is None:
            export.write_binary(frames(), schema, fmt, export.stdout_binary(), kv)
        else:
            with output_file(output) as tmp:
                export.write_binary(frames(), schema, fmt, tmp, kv)
    elif output is None:
        export.write_text(frames(), fmt, sys.stdout, schema)
    else:
        with output_file(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            export.write_text(frames(), fmt, f, schema)
    print(f"ctscope: {counts['expired']:,} of {counts['total']:,} entries expired under Felix's rules ({t.spec()})",
          file=sys.stderr)
