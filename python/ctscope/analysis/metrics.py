"""`ctscope metrics`: Prometheus text exposition (format 0.0.4) for node_exporter's textfile
collector.

Names follow Prometheus conventions: a `ctscope_conntrack_` prefix, base units
(`_seconds`, `_ratio`), no `_total` on gauges, one metric per quantity with labels
partitioning it (sum over `type` gives all entries). Every series carries `node` and `map`
labels; from many snapshots the newest one per (node, map) is exported.
"""

from __future__ import annotations

import math

from ctscope.analysis.expiry import R_NO_REV
from ctscope.analysis.stats import IDLE_EDGES, TCP_STATES, stats
from ctscope.fill import GROW_AT

PREFIX = "ctscope_conntrack_"


def _escape(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(d: dict) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in d.items()) + "}" if d else ""


def _num(v: float | int) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)
    return str(int(v))


class Exposition:
    """Metric families in the order first added; rendered as Prometheus text here, or handed
    to prometheus_client (`ctscope serve`: Prometheus text or OpenMetrics by Accept header).
    `name` is without PREFIX; counters without `_total`, info metrics without `_info`."""

    def __init__(self):
        self.families: dict[str, tuple[str, str, list[tuple[str, dict, float | int]]]] = {}

    def add(self, name: str, kind: str, help_: str, labels: dict, value, suffix: str = "", prefix: str = PREFIX) -> None:
        if kind == "counter":
            suffix = "_total"
        elif kind == "info":
            suffix = "_info"
        fam = self.families.setdefault(prefix + name, (kind, help_, []))
        fam[2].append((suffix, labels, value))

    def text(self) -> str:
        out = []
        for name, (kind, help_, samples) in self.families.items():
            shown = name + ("_total" if kind == "counter" else "_info" if kind == "info" else "")
            out.append(f"# HELP {shown} {help_}")
            out.append(f"# TYPE {shown} {'gauge' if kind == 'info' else kind}")
            out.extend(f"{name}{suffix}{_labels(labels)} {_num(value)}" for suffix, labels, value in samples)
        return "\n".join(out) + "\n"

    def prometheus(self) -> list:
        """The families as prometheus_client Metric objects (for a custom Collector)."""
        from prometheus_client.metrics_core import Metric

        out = []
        for name, (kind, help_, samples) in self.families.items():
            m = Metric(name, help_, kind)
            for suffix, labels, value in samples:
                m.add_sample(name + suffix, {k: str(v) for k, v in labels.items()}, value)
            out.append(m)
        return out



def _newest_per_map(snapshots: list[dict]) -> list[dict]:
    newest: dict[tuple[str, str], dict] = {}
    for s in snapshots:
        k = (s["node"], s["map_name"])
        if k not in newest or (s.get("dump_start_wall_ns") or 0) > (newest[k].get("dump_start_wall_ns") or 0):
            newest[k] = s
    return list(newest.values())


def exposition(st: dict) -> str:
    """Prometheus text for a `stats()` result."""
    return families(st).text()


def families(st: dict, e: Exposition | None = None) -> Exposition:
    """The conntrack families of a `stats()` result (added to `e` when given)."""
    e = Exposition() if e is None else e
    for s in _newest_per_map(st["snapshots"]):
        base = {"node": s["node"], "map": s["map_name"]}
        e.add("info", "gauge", "Conntrack map identity; always 1.",
              {**base, "map_path": s.get("map_path") or "", "layout": s.get("layout") or ""}, 1)
        for t, n in s["by_type"].items():
            e.add("entries", "gauge", "Entries in the conntrack map, by entry type.", {**base, "type": t}, n)
        e.add("max_entries", "gauge", "The conntrack map's max_entries.", base, s["map_size"])
        if s["fill_ratio"] is not None:
            e.add("fill_ratio", "gauge", "Entries divided by max_entries.", base, s["fill_ratio"])
            e.add("fill_after_sweep_ratio", "gauge",
                  f"Entries Felix's next sweep keeps, divided by max_entries (Felix auto-grows above {GROW_AT:.2f}).",
                  base, s["fill_ratio_after_sweep"])
        e.add("connections", "gauge", "Connections as calico-node counts them (entries that are not NAT forward stubs).",
              base, s["total_connections"])
        for p, n in s["by_protocol"].items():
            e.add("protocol_entries", "gauge", "Entries by IP protocol.", {**base, "protocol": p}, n)
        for state, key in TCP_STATES.items():
            e.add("tcp_connections", "gauge", "TCP connections by Calico's TCP state.", {**base, "state": state},
                  s[key])
        e.add("expired_entries", "gauge", "Entries Felix's expiry rules would delete at the dump's time.", base,
              s["expired"])
        for reason, n in s["expired_by_reason"].items():
            e.add("expired_reason_entries", "gauge",
                  "Entries Felix's expiry rules would delete at the dump's time, by Felix's reason.",
                  {**base, "reason": reason}, n)
        e.add("nat_fwd_without_rev_entries", "gauge",
              "NAT forward entries whose NAT reverse entry is missing (Felix deletes them as useless).", base,
              s["expired_by_reason"].get(R_NO_REV, 0))
        if s.get("oldest_idle_s") is not None:
            e.add("oldest_idle_seconds", "gauge", "Time since the longest-idle entry last saw traffic.", base,
                  s["oldest_idle_s"])
        # The idle-time distribution as a Prometheus histogram (cumulative buckets).
        cum = 0
        for edge, b in zip([*IDLE_EDGES, math.inf], s["idle_histogram"]):
            cum += b["entries"]
            e.add("idle_seconds", "histogram", "Time since each entry last saw traffic.",
                  {**base, "le": _num(float(edge))}, cum, "_bucket")
        e.add("idle_seconds", "histogram", "", base, s["idle_seconds_sum"], "_sum")
        e.add("idle_seconds", "histogram", "", base, s["total_entries"], "_count")
        if s.get("dump_seconds") is not None:
            e.add("dump_duration_seconds", "gauge", "Time taken to read the map.", base, s["dump_seconds"])
        if s.get("dump_start_wall_ns"):
            e.add("dump_timestamp_seconds", "gauge", "Wall-clock time the dump started (Unix seconds).", base,
                  s["dump_start_wall_ns"] / 1e9)
    return e


def exporter_families(e: Exposition, *, reads: int, errors: int, last_ok: bool | None, last_duration: float,
                      last_wall: float, changes: dict[str, int] | None, labels: dict | None) -> Exposition:
    """`ctscope serve`'s own series: build info, its reads, and the flows seen to change
    between reads (`changes`: live.py's counts summed over reads, labelled with `labels`)."""
    import sys

    from ctscope import __version__

    pre = "ctscope_"
    e.add("build", "info", "ctscope build information.",
          {"version": __version__, "python": ".".join(map(str, sys.version_info[:3]))}, 1, prefix=pre)
    e.add("reads", "counter", "Map reads (one per scrape at most every --min-interval).", {}, reads, prefix=pre)
    e.add("read_errors", "counter", "Map reads that failed (no such pin, permission, ...).", {}, errors, prefix=pre)
    if last_ok is not None:
        e.add("last_read_success", "gauge", "1 if the last map read succeeded, else 0.", {}, int(last_ok), prefix=pre)
        e.add("last_read_duration_seconds", "gauge", "Wall time of the last read: dump, Felix's rules, counting.",
              {}, last_duration, prefix=pre)
        e.add("last_read_timestamp_seconds", "gauge", "When the last read started (Unix seconds).", {}, last_wall,
              prefix=pre)
    for k, n in (changes or {}).items():
        e.add("changes", "counter", "Flows seen to change between two reads (new, gone, updated, recreated).",
              {**(labels or {}), "change": k}, n)
    return e


def metrics(source=None, **kw) -> str:
    """Prometheus text exposition for SOURCE (keyword arguments as for `ctscope.stats`)."""
    return exposition(stats(source, **kw))
