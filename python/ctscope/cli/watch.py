"""`ctscope watch`: the live map on one screen, or (--events) one line per change."""

from __future__ import annotations

import os
import select
import stat
import sys
import time
from typing import Optional

import polars as pl
import typer

from ctscope.analysis.live import EVENTS, Refresh, Watcher, event_rows, fill_line
from ctscope.analysis.stats import proto_name
from ctscope.analysis.timeouts import format_duration
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app
from ctscope.errors import BadArgument

EVENT_FORMATS = ("table", "ndjson", "csv")
PIN_HELP = "Pinned CT map (default: the newest cali_v4_ct* pin under BPFFS/tc/globals, looked up at every refresh)."


@app.command()
def watch(
    pin: Optional[str] = typer.Argument(None, help=PIN_HELP, show_default=False),
    interval: float = typer.Option(2.0, "--interval", "-i", min=0.05, help="Seconds between refreshes (one dump each)."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0, help="Stop after S seconds."),
    events: bool = typer.Option(False, "--events", help="One line per change (new, gone, updated, recreated), as conntrack -E."),
    fmt: str = typer.Option("table", "--format", "-f", help="--events: table|ndjson|csv."),
    count: Optional[int] = typer.Option(None, "--count", min=1, help="--events: stop after N events."),
    top: int = typer.Option(5, "--top", min=0, max=100, help="Busiest flows shown (the screen shows fewer if it is small)."),
    where: Optional[str] = io.Where,
    timeouts: Optional[str] = io.Timeouts,
    felix_config: Optional[str] = io.FelixConfig,
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """Watch a live CT map: fill against Felix's thresholds, counts, churn, expiry, busiest flows.

    On a terminal: a full screen refreshed every --interval (q or Ctrl-C leaves). Piped: one
    summary line per refresh. --events: one line per changed flow between refreshes."""
    if fmt not in EVENT_FORMATS:
        raise BadArgument(f"--format {fmt!r}: expected one of {', '.join(EVENT_FORMATS)}")
    if not events and count is not None:
        raise BadArgument("--count counts events: use it with --events")
    w = Watcher(pin, bpffs=bpffs, ipv6=ipv6, layout=layout, where=where, timeouts=timeouts,
                felix_config=felix_config, top=top, events=events)
    first = w.refresh()  # fail fast (no such pin, bad --where) before taking over the terminal
    deadline = None if duration is None else time.monotonic() + duration
    try:
        if events:
            _events(w, interval, deadline, fmt, count)
        elif sys.stdout.isatty():
            _screen(w, first, interval, deadline, where)
        else:
            _lines(w, first, interval, deadline)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: exit 0, terminal restored


def _ticks(interval: float, deadline: float | None, keys=None):
    """Yield at every interval (from now) until the deadline; `keys` (a callable returning
    True to stop) is polled while waiting."""
    nxt = time.monotonic()
    while True:
        nxt += interval
        while True:
            now = time.monotonic()
            end = nxt if deadline is None else min(nxt, deadline)
            if now >= end:
                break
            if keys is not None:
                if keys(end - now):
                    return
            else:
                time.sleep(end - now)
        if deadline is not None and time.monotonic() >= deadline:
            return
        if time.monotonic() > nxt + interval:  # a refresh took longer than the interval: don't pile up
            nxt = time.monotonic()
        yield


# ------------------------------------------------------------------------------------------ --events
def _reader_gone(timeout: float) -> bool:
    """Wait `timeout` seconds; True as soon as stdout is a pipe or socket whose reader went
    away (`watch --events | head -1`): without this check a quiet map writes nothing, so
    no EPIPE ever comes and the watch would outlive its reader forever."""
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        time.sleep(timeout)
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        time.sleep(timeout)
        return False
    p = select.poll()
    p.register(fd, 0)  # no events asked: only POLLERR/POLLHUP (the read end closed) wake it
    return bool(p.poll(max(0, int(timeout * 1000))))


def _events(w: Watcher, interval: float, deadline: float | None, fmt: str, count: int | None) -> None:
    seen = 0
    header = fmt == "csv"
    for _ in _ticks(interval, deadline, _reader_gone):
        df = event_rows(w.refresh())
        if df.height == 0:
            continue
        if count is not None:
            df = df.head(count - seen)
        seen += df.height
        sys.stdout.write(_render_events(df, fmt, header))
        sys.stdout.flush()
        header = False
        if count is not None and seen >= count:
            return


def _render_events(df: pl.DataFrame, fmt: str, header: bool) -> str:
    if fmt == "ndjson":
        return df.write_ndjson()
    if fmt == "csv":
        return df.write_csv(include_header=header)
    out = []
    for r in df.iter_rows(named=True):
        delta = "" if r["bytes_delta"] is None else f" (+{r['bytes_delta']:,} B, +{r['packets_delta']:,} pkt)"
        out.append(f"{r['time']} [{r['event'].upper():>9}] {proto_name(r['proto'])} {_ep(r['src'], r['sport'])} -> "
                   f"{_ep(r['dst'], r['dport'])} {r['type']} {r['tcp_state'] or '-'} "
                   f"bytes={r['bytes']:,} packets={r['packets']:,}{delta}")
    return "\n".join(out) + "\n"


def _ep(addr: str | None, port: int | None) -> str:
    if addr is None:
        return "?"
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# ------------------------------------------------------------------------------------------ plain lines
def summary_line(r: Refresh) -> str:
    s, g = r.gen.summary, r.gen
    rates = " ".join(f"{e}/s={_rate(r.rate(e))}" for e in EVENTS)
    return (f"{_clock(g.wall_ns)} {g.snapshot.map_name} entries={s['total_entries']} max_entries={s['map_size']} "
            f"fill={_pct(s['fill_ratio'])} after_sweep={_pct(s['fill_ratio_after_sweep'])} "
            f"verdict={s['autogrow']['verdict']} {rates} expired={s['expired']} "
            f"read_s={g.read_s:.3f} refresh_s={g.refresh_s:.3f} cpu_s={g.cpu_s:.3f}")


def _lines(w: Watcher, first: Refresh, interval: float, deadline: float | None) -> None:
    print(summary_line(first), flush=True)
    for _ in _ticks(interval, deadline, _reader_gone):
        print(summary_line(w.refresh()), flush=True)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _clock(wall_ns: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(wall_ns / 1e9)) + "Z"


# ------------------------------------------------------------------------------------------ the screen
def screen_lines(r: Refresh, where: str | None, interval: float, width: int, height: int) -> list[tuple[str, str]]:
    """(text, style) lines of one screen, at most `height` lines of at most `width` columns."""
    s, g = r.gen.summary, r.gen
    ag = s["autogrow"]
    verdict_style = {"ok": "green", "warning": "yellow", "grow": "bold red"}.get(ag["verdict"], "")
    lines: list[tuple[str, str]] = []
    lines.append((f"ctscope watch  {_clock(g.wall_ns)}  every {interval:g}s  q quits  {g.snapshot.path}", "bold"))
    if where:
        lines.append((f"only entries where {where}", "dim"))
    bar_w = 10
    fill = min(max(s["fill_ratio"] or 0.0, 0.0), 1.0)
    bar = "█" * round(bar_w * fill) + "░" * (bar_w - round(bar_w * fill))
    lines.append((f"Fill {bar} {fill_line(s)}", verdict_style))
    lines.append(("Types     " + _counts(s["by_type"]), ""))
    lines.append(("Protocols " + _counts(s["by_protocol"]), ""))
    lines.append(("TCP       " + (_counts(s["by_state"]) or "-"), ""))
    over = f" over {r.interval_s:.1f}s" if r.interval_s else " (from the next refresh)"
    lines.append(("Changes   " + " · ".join(f"{e} {_rate(r.rate(e))}/s" for e in EVENTS) + over, ""))
    reasons = " · ".join(f"{_short(k)} {v:,}" for k, v in s["expired_by_reason"].items())
    lines.append((f"Expired   {s['expired']:,} now (Felix's rules)" + (f": {reasons}" if reasons else ""), ""))
    oldest = s.get("oldest_idle_s")
    lines.append((f"Oldest idle {format_duration(int(oldest) * 1_000_000_000) if oldest is not None else '-'}"
                   f"   timeouts {s['timeouts']}", "dim"))
    cost = (f"Cost      read {g.read_s:.3f}s · refresh {g.refresh_s:.3f}s · CPU {g.cpu_s:.3f}s "
            f"({g.cpu_s / g.refresh_s:.1f} cores)" if g.refresh_s else "")
    room = height - len(lines) - 1 - 2 * 2  # the cost line, two titles + two headers
    rows = max(0, min(room // 2, len(r.top_bytes) if r.top_bytes is not None else 0))
    for title, df, col in (("Busiest by bytes/s", r.top_bytes, "bytes_per_s"),
                           ("Busiest by packets/s", r.top_packets, "packets_per_s")):
        lines.append((title, "bold"))
        if df is None or df.height == 0 or rows == 0:
            lines.append(("  (no traffic between the last two refreshes)" if r.interval_s else "  (from the next refresh)",
                          "dim"))
            continue
        for row in df.head(rows).iter_rows(named=True):
            lines.append((f"  {proto_name(row['proto']):<5} {_ep(row['src'], row['sport'])} -> "
                          f"{_ep(row['dst'], row['dport'])}  {_si(row['bytes_per_s'])}B/s "
                          f"{_si(row['packets_per_s'])}pkt/s", ""))
    lines.append((cost, "dim"))
    return [(t if len(t) <= width else t[:max(width - 1, 0)] + "…", st) for t, st in lines[:height]]


def _counts(d: dict) -> str:
    return " · ".join(f"{k} {v:,}" for k, v in d.items())


def _short(reason: str) -> str:
    return reason.replace("no traffic on ", "idle ").replace(" for too long", "")


def _si(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.1f}{unit}"
    return f"{v:.0f}"


def _screen(w: Watcher, first: Refresh, interval: float, deadline: float | None, where: str | None) -> None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    console = Console()

    def render(r: Refresh):
        width, height = console.size
        return Group(*(Text(t, style=st, no_wrap=True, overflow="ellipsis")
                       for t, st in screen_lines(r, where, interval, width, height)))

    stdin = sys.stdin if sys.stdin.isatty() else None
    restore = _cbreak(stdin)
    try:
        with Live(render(first), console=console, screen=True, auto_refresh=False) as live:
            def keys(timeout: float) -> bool:
                if stdin is None:
                    time.sleep(timeout)
                    return False
                ready, _, _ = select.select([stdin], [], [], timeout)
                if ready:
                    ch = os.read(stdin.fileno(), 32)
                    return b"q" in ch.lower() or not ch
                return False

            for _ in _ticks(interval, deadline, keys):
                live.update(render(w.refresh()), refresh=True)
    finally:
        restore()


def _cbreak(stdin):
    """Keys without Enter (q quits); Ctrl-C still interrupts. Returns the undo."""
    if stdin is None:
        return lambda: None
    import termios
    import tty

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    return lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)

