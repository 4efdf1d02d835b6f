"""`ctscope snapshot`: dump a live map to a snapshot file, by default into a hive-partitioned
directory (DIR/node=<node>/date=<YYYY-MM-DD>/<time>Z-<map>.parquet)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ctscope.cli import analysis_io as io
from ctscope.cli.app import app
from ctscope.snapshot_dir import write_snapshot


@app.command()
def snapshot(
    pin: Optional[str] = typer.Argument(None, help="Pinned map (default: newest cali_v4_ct* under BPFFS/tc/globals)."),
    directory: Optional[str] = typer.Option(None, "--dir", "-d", help="Dataset root: writes DIR/node=N/date=D/TIME-MAP.parquet."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Write exactly this file instead."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="parquet|arrow (default: from the -o suffix, else parquet)."),
    node: Optional[str] = typer.Option(None, "--node", help="Node name (default: $NODE_NAME, else the host name)."),
    where: Optional[str] = io.Where,
    now_ns: Optional[int] = io.NowNs,
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """Write a snapshot (map entries plus the metadata offline analysis needs)."""
    path, rows = write_snapshot(pin, directory=directory, output=output, fmt=fmt, node=node, bpffs=bpffs, ipv6=ipv6,
                                layout=layout, now_ns=now_ns, where=where)
    print(path)
    print(f"ctscope: wrote {rows} entries to {path}", file=sys.stderr)
