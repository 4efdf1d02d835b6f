"""`ctscope report`: one self-contained HTML page (inline CSS and SVG, nothing fetched).

A short inline script checks, once the page is laid out, that every chart drew: it sets
`data-drawn` on each chart (marks, their area, the chart's size) and `data-charts-drawn` on
<body>. Opening the page in a browser shows nothing of this; tests read it from the DOM.
"""

from __future__ import annotations

import datetime as dt
from html import escape

from ctscope.analysis import charts
from ctscope.analysis.sources import Source, open_source
from ctscope import fill
from ctscope.analysis.stats import stats
from ctscope.fill import GROW_AT, GROW_SUSTAINED_AT
from ctscope.analysis.top import top
from ctscope.export import walk_changed, walk_text

CHECK_SCRIPT = """
document.addEventListener("DOMContentLoaded", () => {
  let drawn = 0;
  for (const svg of document.querySelectorAll("svg.chart")) {
    const marks = Array.from(svg.querySelectorAll(".mark"));
    let area = 0;
    for (const m of marks) { const b = m.getBBox(); area += b.width * b.height; }
    const r = svg.getBoundingClientRect();
    svg.dataset.drawn = marks.length + " " + Math.round(area) + " " + Math.round(r.width) + "x" + Math.round(r.height);
    if (marks.length > 0 && area > 0 && r.width > 0 && r.height > 0) drawn++;
  }
  document.body.dataset.chartsDrawn = String(drawn);
});
"""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111; margin: 24px; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 0 0 8px; }
.sub { color: #555; margin-bottom: 18px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 16px; }
.card { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 14px 16px; overflow-x: auto; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 16px; }
.kpi { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px 14px; min-width: 130px; }
.kpi b { display: block; font-size: 20px; } .kpi span { color: #555; font-size: 12px; }
table { border-collapse: collapse; width: 100%; } td, th { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #3a9d5d; } .warning { color: #b07810; } .grow { color: #c8423b; }
.small { font-size: 12px; color: #555; }
footer { color: #777; margin-top: 18px; font-size: 12px; }
"""


def _css(verdict: str) -> str:
    return {"high": "grow", "full": "grow"}.get(verdict, verdict)


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _table(rows: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(f"<tr><td>{escape(k)}</td><td class='n'>{_n(v)}</td></tr>" for k, v in rows) + "</table>"


def _frame_table(df) -> str:
    head = "".join(f"<th{' class=n' if df.schema[c].is_numeric() else ''}>{escape(c)}</th>" for c in df.columns)
    body = []
    for row in df.iter_rows():
        cells = []
        for c, v in zip(df.columns, row):
            if isinstance(v, float):
                v = f"{v:.1%}" if c == "share" else f"{v:,.1f}"
            elif isinstance(v, int) and ("port" in c or c == "proto"):
                v = str(v)
            cls = " class=n" if df.schema[c].is_numeric() else ""
            cells.append(f"<td{cls}>{_n(v) if v is not None else '-'}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(st: dict, talkers, services) -> str:
    """The page for a stats() result and top() frames."""
    from ctscope import __version__

    snaps = st["snapshots"]
    title = "ctscope report"
    if len(snaps) == 1:
        s = snaps[0]
        where = f"{escape(s['node'] or '?')} · {escape(s['map_name'] or '?')} · dumped {escape(s['dump_start'] or '?')}"
    else:
        nodes = sorted({s["node"] for s in snaps})
        where = f"{len(snaps)} snapshots from {len(nodes)} node(s)"
    verdict = st["autogrow"]["verdict"]
    now = fill.judge(st["total_entries"], st["map_size"])
    kpis = [
        ("entries", f"{st['total_entries']:,}"),
        ("max_entries", f"{st['map_size']:,}"),
        ("fill", escape(now.text())),
        ("expired (next sweep)", f"{st['expired']:,}"),
        ("connections", f"{st['total_connections']:,}"),
        ("NAT connections", f"{st['nat_connections']:,}"),
    ]
    hist = st["idle_histogram"]
    by_proto = list(st["by_protocol"].items())
    by_state = list(st["by_state"].items())
    calico = [
        ("Conntrack map size", st["map_size"]), ("Total connections", st["total_connections"]),
        ("Total entries", st["total_entries"]), ("NAT connections", st["nat_connections"]),
        ("TCP", st["tcp"]), ("UDP", st["udp"]), ("Others", st["others"]),
        ("TCP Established", st["tcp_established"]), ("TCP Closed", st["tcp_closed"]),
        ("TCP Reset", st["tcp_reset"]), ("TCP Syn-sent", st["tcp_syn_sent"]),
    ]
    expired_rows = list(st["expired_by_reason"].items()) or [("(none)", 0)]
    per_snapshot = ""
    if len(snaps) > 1:
        rows = "".join(
            f"<tr><td>{escape(s['node'])}</td><td>{escape(s['map_name'])}</td><td>{escape(s['dump_start'] or '')}</td>"
            f"<td class=n>{s['total_entries']:,}</td><td class=n>{s['map_size']:,}</td>"
            f"<td class=n>{escape(fill.judge(s['total_entries'], s['map_size']).text())}</td><td class=n>{s['expired']:,}</td>"
            f"<td class='{s['autogrow']['verdict']}'>{s['autogrow']['verdict']}</td></tr>" for s in snaps)
        per_snapshot = (
            "<div class='card' style='margin-top:16px'><h2>Snapshots</h2><table><tr><th>node</th><th>map</th>"
            "<th>dump start</th><th class=n>entries</th><th class=n>max</th><th class=n>fill</th>"
            f"<th class=n>expired</th><th>auto-grow</th></tr>{rows}</table></div>")
    talker_labels = [str(r["src"]) for r in talkers.iter_rows(named=True)]
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — {escape(st['source'])}</title><style>{CSS}</style></head>
<body>
<h1>Calico conntrack map report</h1>
<div class="sub">{where} · source <code>{escape(st['source'])}</code>{' · where <code>' + escape(st['where']) + '</code>' if st.get('where') else ''}</div>
<div class="kpis">{''.join(f'<div class="kpi"><b>{v}</b><span>{escape(k)}</span></div>' for k, v in kpis)}</div>
<div class="grid">
<div class="card"><h2>Fill ratio <small class="{_css(now.verdict)}">now: {now.verdict}</small> <small class="{verdict}">auto-grow: {verdict}</small></h2>
{charts.gauge(now, st['fill_ratio_after_sweep'], verdict)}
{f'<p class="grow"><b>{escape(now.warning())}</b></p>' if now.warning() else ''}
{''.join(f'<p class="small">{escape(walk_text(s["walk"], s.get("map_size")))}{" (" + escape(str(s["node"])) + ")" if len(snaps) > 1 else ""}</p>' for s in snaps if walk_changed(s.get("walk")))}
<p>Felix (bpfMapSizeConntrackScaling DoubleIfFull) doubles the map when, after a sweep, more than
{GROW_AT:.0%} of it is live, or more than {GROW_SUSTAINED_AT:.0%} for 3 rising sweeps.</p></div>
<div class="card"><h2>Idle time</h2>
{charts.columns('idle-histogram', 'Entries by time since last traffic', [b['bucket'] for b in hist], [b['entries'] for b in hist])}</div>
<div class="card"><h2>Top talkers (entries by source)</h2>
{charts.bars('top-talkers', 'Top sources by entries', talker_labels, [r['entries'] for r in talkers.iter_rows(named=True)])}</div>
<div class="card"><h2>Protocols</h2>{charts.donut('protocol-mix', 'Entries by protocol', by_proto)}</div>
<div class="card"><h2>TCP states</h2>{charts.donut('tcp-states', 'TCP connections by state', by_state)}</div>
<div class="card"><h2>calico-node conntrack stats</h2>{_table(calico)}</div>
<div class="card"><h2>Expired by Felix's rules</h2>{_table(expired_rows)}
<p class="small">timeouts: {escape(st['timeouts'].replace(',', ', '))}</p></div>
<div class="card"><h2>Top services (NAT, by entries)</h2>{_frame_table(services.select('proto', 'orig_ip', 'orig_port', 'entries', 'share')) if services.height else '<p>no NAT entries</p>'}</div>
</div>
{per_snapshot}
<footer>ctscope {escape(__version__)} · generated {generated}</footer>
<script>{CHECK_SCRIPT}</script>
</body></html>
"""


def report(source=None, *, where: str | None = None, timeouts=None, felix_config=None, now_ns: int | None = None,
           **source_kw) -> str:
    """The HTML report for SOURCE (see `ctscope.scan`)."""
    src = source if isinstance(source, Source) else open_source(source, now_ns=now_ns, **source_kw)
    st = stats(src, where=where, timeouts=timeouts, felix_config=felix_config)
    talkers = top(src, by="src", metric="entries", n=10, where=where)
    services = top(src, by="service", metric="entries", n=10, where=where)
    return render(st, talkers, services)
