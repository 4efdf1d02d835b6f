"""`ctscope diff`: flows new, gone and changed between two snapshots (or live pins)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ctscope.analysis.diff import diff as compute_diff
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app


@app.command()
def diff(
    old: str = typer.Argument(..., help="The earlier snapshot (or a live pin)."),
    new: str = typer.Argument(..., help="The later snapshot (or a live pin)."),
    all_flows: bool = typer.Option(False, "--all", help="Also list unchanged flows."),
    where: Optional[str] = io.Where,
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table|json|ndjson|csv|parquet|arrow"),
    output: Optional[str] = io.Output,
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0, max=2**63 - 1, help="At most N flows."),
    layout: str = io.Layout,
) -> None:
    """Compare two snapshots: new/gone/changed/recreated flows with byte and packet deltas and rates."""
    fmt = io.frame_format(fmt, output)
    d = compute_diff(old, new, where=where, all=all_flows, layout=layout)
    flows = d.flows.head(limit) if limit is not None else d.flows
    s = d.summary
    if fmt == "json":
        io.write_output(json.dumps({"summary": s, "flows": flows.to_dicts()}, indent=1, default=str) + "\n", output)
        return
    interval = f"{s['interval_s']:.3f} s ({s['interval_clock']} clock)" if s["interval_s"] is not None else "unknown"
    rate = f", {s['bytes_per_s']:,.0f} B/s" if s["bytes_per_s"] is not None else ""
    header = (f"# {s['old_snapshot']['source']} -> {s['new_snapshot']['source']}: interval {interval}\n"
              f"# new {s['new']:,}, gone {s['gone']:,}, changed {s['changed']:,}, recreated {s['recreated']:,}, "
              f"unchanged {s['unchanged']:,}; bytes +{s['bytes_delta']:,}{rate}, packets +{s['packets_delta']:,}")
    if fmt == "table":
        flows = flows.select("change", "proto", "src", "sport", "dst", "dport", "type", "tcp_state_old", "tcp_state_new",
                             "bytes_delta", "bytes_per_s", "packets_delta")
    io.emit_frame(flows, fmt, output, header=header)
