"""`ctscope query`: SQL over the entries (polars SQL), as a table named `ct`."""

from __future__ import annotations

from typing import List, Optional

import typer

from ctscope.analysis.query import query as run_query
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app
from ctscope.errors import BadArgument


@app.command()
def query(
    args: List[str] = typer.Argument(..., metavar="[SOURCE] SQL", help="Optional SOURCE, then the SQL text."),
    where: Optional[str] = io.Where,
    timeouts: Optional[str] = io.Timeouts,
    felix_config: Optional[str] = io.FelixConfig,
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table|json|ndjson|csv|parquet|arrow"),
    output: Optional[str] = io.Output,
    now_ns: Optional[int] = io.NowNs,
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """Run SQL over table `ct`, e.g. "SELECT dport, count(*) AS n FROM ct GROUP BY dport ORDER BY n DESC LIMIT 5".

    Felix's `expired` and `expire_reason` columns exist when the SQL or --where names them."""
    if len(args) > 2:
        raise BadArgument(f"query takes [SOURCE] SQL, got {len(args)} arguments (quote the SQL)")
    source, sql = (None, args[0]) if len(args) == 1 else (args[0], args[1])
    fmt = io.frame_format(fmt, output)
    df = run_query(sql, source, where=where, timeouts=timeouts, felix_config=felix_config,
                   **io.source_kw(bpffs, ipv6, layout, now_ns))
    io.emit_frame(df, fmt, output)
