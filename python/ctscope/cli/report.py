"""`ctscope report`: a self-contained HTML page with charts and the stats."""

from __future__ import annotations

import sys
from typing import Optional

from ctscope.analysis.report import report as render_report
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app


@app.command()
def report(
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
    """Write an HTML report (fill gauge, idle histogram, top talkers, protocol/state mix, stats)."""
    html = render_report(source, where=where, timeouts=timeouts, felix_config=felix_config,
                         **io.source_kw(bpffs, ipv6, layout, now_ns))
    io.write_output(html, output)
    if output:
        print(f"ctscope: wrote report to {output}", file=sys.stderr)
