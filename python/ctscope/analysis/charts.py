"""Inline SVG charts for the HTML report, drawn here so the page needs nothing from the
network (no CDN, no chart library). Every chart is an `<svg class="chart">`; the shapes that
carry data have class `mark` (the report's check script and the tests look for them)."""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#2f6fb0", "#e07b39", "#3a9d5d", "#c8423b", "#8a63b8", "#8c6d4f", "#d36ba6", "#6b7280", "#b5a332",
           "#2ea3b5"]
OK, WARN, BAD, TRACK = "#3a9d5d", "#e0a030", "#c8423b", "#e5e7eb"


def _fmt(n: float) -> str:
    """3 significant digits and a unit: 999, 1k (999,500 rounds up to it, never `1e+03k`), 12.3M."""
    n = float(n)
    if not math.isfinite(n):
        return str(n)
    if abs(n) < 1000 and n == int(n):
        return f"{n:.0f}"
    # The unit is chosen after rounding: a value that rounds to 1000 of one unit is 1 of the next.
    for unit, size in (("", 1.0), ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15)):
        text = f"{n / size:.3g}"
        if abs(float(text)) < 1000:
            return text + unit
    return f"{n:.3g}"


def _svg(name: str, w: int, h: int, body: str, title: str) -> str:
    return (f'<svg class="chart" data-chart="{escape(name)}" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {w} {h}" style="width:100%;max-width:{w}px;height:auto" role="img" '
            f'aria-label="{escape(title)}">'
            f"<title>{escape(title)}</title>{body}</svg>")


def _arc(cx: float, cy: float, r: float, a0: float, a1: float) -> str:
    """SVG path of a circular arc from angle a0 to a1 (radians, 0 = east, clockwise on screen)."""
    x0, y0 = cx + r * math.cos(a0), cy + r * math.sin(a0)
    x1, y1 = cx + r * math.cos(a1), cy + r * math.sin(a1)
    large = 1 if (a1 - a0) % (2 * math.pi) > math.pi else 0
    return f"M{x0:.2f},{y0:.2f} A{r},{r} 0 {large} 1 {x1:.2f},{y1:.2f}"


def gauge(now, after_sweep: float | None, sweep_verdict: str = "ok") -> str:
    """A half-ring gauge of the fill now (a `ctscope.fill.Fill`), with Felix's auto-grow
    thresholds as ticks. Its colour is the worse of the fill now (high, full) and Felix's
    verdict on the fill after its next sweep."""
    from ctscope import fill as fills

    w, h, cx, cy, r = 320, 200, 160, 160, 120
    value = max(0.0, min(1.0, now.ratio or 0.0))
    verdict = fills.worst(now.verdict, sweep_verdict)
    color = BAD if verdict in ("high", "grow", "full") else WARN if verdict == "warning" else OK
    start = math.pi
    body = [f'<path d="{_arc(cx, cy, r, start, 2 * math.pi)}" stroke="{TRACK}" stroke-width="28" fill="none"/>']
    if value > 0:
        end = start + math.pi * max(value, 0.004)
        body.append(f'<path class="mark" d="{_arc(cx, cy, r, start, end)}" stroke="{color}" stroke-width="28" '
                    f'fill="none"><title>{escape(now.text())} full now</title></path>')
    if after_sweep is not None and 0 < after_sweep < value:
        a = start + math.pi * after_sweep
        body.append(f'<path d="{_arc(cx, cy, r - 20, start, a)}" stroke="#6b7280" stroke-width="5" fill="none">'
                    f"<title>{after_sweep:.1%} after Felix's next sweep</title></path>")
    for m in (fills.GROW_SUSTAINED_AT, fills.GROW_AT):
        a = start + math.pi * m
        x0, y0 = cx + (r - 18) * math.cos(a), cy + (r - 18) * math.sin(a)
        x1, y1 = cx + (r + 18) * math.cos(a), cy + (r + 18) * math.sin(a)
        body.append(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#111" stroke-width="2"/>')
        body.append(f'<text x="{x1 + 4:.1f}" y="{y1 - 2:.1f}" font-size="11">{m:.0%}</text>')
    label = now.text()
    body.append(f'<text x="{cx}" y="{cy - 20}" text-anchor="middle" font-size="30" font-weight="600" '
                f'fill="{color if now.verdict in ("high", "full") else "#111"}">{label}</text>')
    sub = f"{after_sweep:.1%} after sweep" if after_sweep is not None else ""
    if now.verdict in ("high", "full"):
        sub = f"{now.verdict.upper()} now" + (f" · {sub}" if sub else "")
    body.append(f'<text x="{cx}" y="{cy + 8}" text-anchor="middle" font-size="13" fill="#444">{sub}</text>')
    return _svg("fill-gauge", w, h, "".join(body), "Conntrack map fill ratio")


def columns(name: str, title: str, labels: list[str], values: list[float], color: str = PALETTE[0]) -> str:
    """Vertical bars (the idle-time histogram)."""
    w, h, left, bottom, top = 560, 240, 48, 40, 16
    n = max(len(values), 1)
    slot = (w - left - 8) / n
    vmax = max(values) if values and max(values) > 0 else 1
    body = [f'<line x1="{left}" y1="{h - bottom}" x2="{w - 4}" y2="{h - bottom}" stroke="#999"/>']
    for i, (lab, v) in enumerate(zip(labels, values)):
        bh = (h - bottom - top) * v / vmax
        x = left + i * slot + slot * 0.12
        bw = slot * 0.76
        if v > 0:
            body.append(f'<rect class="mark" x="{x:.1f}" y="{h - bottom - bh:.1f}" width="{bw:.1f}" height="{max(bh, 1):.1f}" '
                        f'fill="{color}"><title>{escape(lab)}: {v:,.0f}</title></rect>')
            body.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom - bh - 3:.1f}" text-anchor="middle" '
                        f'font-size="10">{_fmt(v)}</text>')
        body.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 14}" text-anchor="middle" font-size="11">'
                    f"{escape(lab)}</text>")
    body.append(f'<text x="4" y="{top}" font-size="10" fill="#666">max {_fmt(vmax)}</text>')
    return _svg(name, w, h, "".join(body), title)


def bars(name: str, title: str, labels: list[str], values: list[float], color: str = PALETTE[1]) -> str:
    """Horizontal bars, largest first (top talkers)."""
    row, label_w, w = 24, 210, 560
    h = max(row * len(values), row) + 8
    vmax = max(values) if values and max(values) > 0 else 1
    body = []
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = 4 + i * row
        bw = (w - label_w - 70) * v / vmax
        body.append(f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end" font-size="12">{escape(lab)}</text>')
        if v > 0:
            body.append(f'<rect class="mark" x="{label_w}" y="{y + 3}" width="{max(bw, 1):.1f}" height="{row - 6}" '
                        f'fill="{color}"><title>{escape(lab)}: {v:,.0f}</title></rect>')
        body.append(f'<text x="{label_w + bw + 5:.1f}" y="{y + 16}" font-size="11">{_fmt(v)}</text>')
    if not values:
        body.append('<text x="10" y="20" font-size="12" fill="#666">no entries</text>')
    return _svg(name, w, h, "".join(body), title)


def donut(name: str, title: str, parts: list[tuple[str, float]]) -> str:
    """A ring of shares with a legend (protocol mix, TCP states)."""
    w, h, cx, cy, r = 360, 200, 100, 100, 72
    total = sum(v for _, v in parts)
    body = []
    if total <= 0:
        body.append(f'<circle cx="{cx}" cy="{cy}" r="{r}" stroke="{TRACK}" stroke-width="30" fill="none"/>')
    a = -math.pi / 2
    for i, (lab, v) in enumerate(parts):
        if v <= 0:
            continue
        color = PALETTE[i % len(PALETTE)]
        share = v / total
        title_ = f"{escape(lab)}: {v:,.0f} ({share:.1%})"
        if share >= 0.9999:
            body.append(f'<circle class="mark" cx="{cx}" cy="{cy}" r="{r}" stroke="{color}" stroke-width="30" '
                        f'fill="none"><title>{title_}</title></circle>')
        else:
            a1 = a + 2 * math.pi * share
            body.append(f'<path class="mark" d="{_arc(cx, cy, r, a, a1)}" stroke="{color}" stroke-width="30" '
                        f'fill="none"><title>{title_}</title></path>')
            a = a1
    for i, (lab, v) in enumerate(parts[:8]):
        y = 24 + i * 20
        color = PALETTE[i % len(PALETTE)]
        share = v / total if total else 0
        body.append(f'<rect x="200" y="{y - 10}" width="12" height="12" fill="{color}"/>')
        body.append(f'<text x="218" y="{y}" font-size="12">{escape(lab)} {share:.1%}</text>')
    body.append(f'<text x="{cx}" y="{cy + 5}" text-anchor="middle" font-size="14" font-weight="600">{_fmt(total)}</text>')
    return _svg(name, w, h, "".join(body), title)
