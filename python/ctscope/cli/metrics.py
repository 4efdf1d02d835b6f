"""`ctscope metrics`: Prometheus text exposition, e.g. for node_exporter's textfile collector."""

from __future__ import annotations

from typing import Optional

from ctscope.analysis.metrics import metrics as compute_metrics
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app


@app.command()
def metrics(
    source: Optional[str] = io.Source,
    output: Optional[str] = io.Output,
    where: Optional[str] = io.Where,
    timeouts: Optional[str] = io.Timeouts,
    felix_config: Optional[str] = io.FelixConfig,
    now_ns: Optional[int] = io.NowNs,
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """Prometheus metrics for the map (write with -o DIR/ctscope.prom for the textfile collector: atomic)."""
    text = compute_metrics(source, where=where, timeouts=timeouts, felix_config=felix_config,
                           **io.source_kw(bpffs, ipv6, layout, now_ns))
    io.write_output(text, output, private=False)  # aggregates node_exporter must read
