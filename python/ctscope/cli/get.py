"""`ctscope get`: one connection's entries, looked up directly (read-only)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ctscope import act, export
from ctscope.cli.app import app
from ctscope.errors import NoEntry
from ctscope.outfile import output_file
from ctscope.pins import DEFAULT_BPFFS

# the table shows how each row was found (the key, its other order, the NAT rev of a fwd)
TABLE = ["found_by", *export.TABLE_COLUMNS]


@app.command()
def get(
    proto: str = typer.Argument(..., help="tcp|udp|icmp|icmpv6|sctp|any|NUMBER."),
    src: str = typer.Argument(..., help="Source ADDR[:PORT] ([ADDR]:PORT for IPv6)."),
    dst: str = typer.Argument(..., help="Destination ADDR[:PORT]."),
    pin: Optional[str] = typer.Argument(None, help="Pinned map (default: newest cali_v4_ct*/cali_v6_ct* for the address family)."),
    bpffs: str = typer.Option(DEFAULT_BPFFS, "--bpffs", help="bpffs mount to look for the default pin under."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table|json|ndjson|csv|parquet|arrow (default: from -o suffix, else table)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Write to FILE (atomically)."),
    layout: str = typer.Option("auto", "--layout", help="auto|v2|v3-created|v3|v4"),
    now_ns: Optional[int] = typer.Option(None, "--now-ns", min=0, max=2**64 - 1, help="Monotonic reference time for idle_s."),
) -> None:
    """Look up one connection (Calico's ordered key, O(1)); a NAT fwd entry brings its NAT rev
    entry. Exit 6 when the map holds no entry for it."""
    fmt = export.format_from_path(output, fmt)
    df = act.lookup(proto, src, dst, pin, layout=layout, bpffs=bpffs, now_ns=now_ns)
    if df.height == 0:
        raise NoEntry(f"no entry for {proto} {src} -> {dst} (either order)")
    if fmt in export.BINARY_FORMATS:
        target = output or export.stdout_binary()
        if output:
            with output_file(output) as tmp:
                export.write_binary(iter([df]), df.schema, fmt, tmp, None)
        else:
            export.write_binary(iter([df]), df.schema, fmt, target, None)
    elif output:
        with output_file(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            export.write_text(iter([df]), fmt, f, df.schema, TABLE)
    else:
        export.write_text(iter([df]), fmt, sys.stdout, df.schema, TABLE)
