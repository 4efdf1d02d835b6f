"""`ctscope stats`: calico-node's `conntrack stats` figures, fill against Felix's auto-grow
thresholds, counts by type/protocol/state, an idle-time histogram and the expired count."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ctscope import fill
from ctscope.export import walk_changed, walk_text
from ctscope.analysis.stats import stats as compute_stats
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app
from ctscope.textsafe import printable

BAR_WIDTH = 40


@app.command()
def stats(
    source: Optional[str] = io.Source,
    as_json: bool = typer.Option(False, "--json", help="Print every figure as JSON."),
    where: Optional[str] = io.Where,
    timeouts: Optional[str] = io.Timeouts,
    felix_config: Optional[str] = io.FelixConfig,
    now_ns: Optional[int] = io.NowNs,
    output: Optional[str] = io.Output,
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """Conntrack statistics, as `calico-node -bpf conntrack stats` and more."""
    st = compute_stats(source, where=where, timeouts=timeouts, felix_config=felix_config,
                       **io.source_kw(bpffs, ipv6, layout, now_ns))
    text = json.dumps(st, indent=2) + "\n" if as_json else format_stats(st)
    io.write_output(text, output)


def format_stats(st: dict) -> str:
    snaps = st["snapshots"]
    lines = []
    if len(snaps) == 1:
        s = snaps[0]
        lines.append(f"# {s['map_name']} on {s['node']} ({s['kind']} {s['source']}), dumped {s['dump_start']}")
    else:
        lines.append(f"# {len(snaps)} snapshots from {len({s['node'] for s in snaps})} node(s) in {st['source']}")
    if st.get("where"):
        lines.append(f"# only entries where {st['where']}")
    # calico-node's own lines, in its order and wording
    lines += [
        f"Conntrack map size: {st['map_size']}",
        f"Total connections: {st['total_connections']}",
        f"Total entries: {st['total_entries']}",
        f"NAT connections: {st['nat_connections']}",
        "",
        f"TCP : {st['tcp']}",
        f"UDP : {st['udp']}",
        f"Others : {st['others']}",
        "",
        f"TCP Established: {st['tcp_established']}",
        f"TCP Closed: {st['tcp_closed']}",
        f"TCP Reset: {st['tcp_reset']}",
        f"TCP Syn-sent: {st['tcp_syn_sent']}",
        "",
    ]
    ag = st["autogrow"]
    now = fill.judge(st["total_entries"], st["map_size"])
    after = fill.judge(st["total_entries"] - st["expired"], st["map_size"])
    if now.ratio is not None:
        lines.append(f"Fill: {now.text()} of {st['map_size']:,} now: {now.verdict}; after Felix's next sweep "
                     f"{after.text()} (auto-grow above {ag['grow_at']:.0%}, or "
                     f"{ag['grow_sustained_at']:.0%} for 3 rising sweeps): {ag['verdict']}")
        if now.warning():
            lines.append(f"  WARNING: {now.warning()}")
    for s in snaps:
        if walk_changed(s.get("walk")):
            lines.append(f"  note: {walk_text(s['walk'], s.get('map_size') or s.get('max_entries'))}"
                         + (f" ({s['node']})" if len(snaps) > 1 else ""))
    lines.append(f"Expired (Felix's next sweep deletes): {st['expired']:,}")
    width = max((len(r) for r in st["expired_by_reason"]), default=0)
    for reason, n in st["expired_by_reason"].items():
        lines.append(f"  {reason.ljust(width)}  {n:>12,}")
    lines.append(f"Timeouts: {st['timeouts']}")
    lines.append("")
    for title, counts in (("By type", st["by_type"]), ("By protocol", st["by_protocol"]),
                          ("By TCP state", st["by_state"])):
        lines.append(f"{title + ':':<14}" + " · ".join(f"{k} {v:,}" for k, v in counts.items()))
    lines.append("")
    lines.append("Idle time (since last traffic):")
    hist = st["idle_histogram"]
    peak = max((b["entries"] for b in hist), default=0) or 1
    for b in hist:
        bar = "█" * round(BAR_WIDTH * b["entries"] / peak)
        if b["entries"] and not bar:
            bar = "▏"
        lines.append(f"  {b['bucket']:>7} │{bar.ljust(BAR_WIDTH)} {b['entries']:>12,}")
    if len(snaps) > 1:
        lines.append("")
        lines.append(f"{'NODE':<24} {'MAP':<12} {'DUMP START':<24} {'ENTRIES':>10} {'MAX':>10} {'FILL':>6} "
                     f"{'EXPIRED':>10}  AUTO-GROW")
        for s in snaps:
            lines.append(f"{s['node'][:24]:<24} {s['map_name']:<12} {str(s['dump_start']):<24} "
                         f"{s['total_entries']:>10,} {s['map_size']:>10,} {_fill_cell(s):>6} "
                         f"{s['expired']:>10,}  {s['autogrow']['verdict']}")
    return "\n".join(printable(line) for line in lines) + "\n"  # names from files: controls escaped


def _fill_cell(s: dict) -> str:
    return fill.judge(s["total_entries"], s["map_size"]).text()

