"""`ctscope metrics`: Prometheus text exposition (format 0.0.4) for node_exporter's textfile
collector.

Names follow Prometheus conventions: a `ctscope_conntrack_` prefix, base units
(`_seconds`, `_ratio`), no `_total` on gauges, one metric per quantity with labels
partitioning it (sum over `type` gives all entries). Every series carries `node` and `map`
labels; from many snapshots the newest one per (node, map) is exported.
"""

from __future__ import annotations

import math

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


class _Exposition:
    def __init__(self):
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_: str, labels: dict, value, suffix: str = "") -> None:
        fam = self.families.setdefault(PREFIX + name, (kind, help_, []))
        fam[2].append(f"{PREFIX}{name}{suffix}{_labels(labels)} {_num(value)}")

    def text(self) -> str:
        out = []
        for name, (kind, help_, samples) in self.families.items():
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def _newest_per_map(snapshots: list[dict]) -> list[dict]:
    newest: dict[tuple[str, str], dict] = {}
    for s in snapshots:
        k = (s["node"], s["map_name"])
        if k not in newest or (s.get("dump_start_wall_ns") or 0) > (newest[k].get("dump_start_wall_ns") or 0):
            newest[k] = s
    return list(newest.values())


def exposition(st: dict) -> str:
    """Prometheus text for a `stats()` result."""
    e = _Exposition()
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
    return e.text()


def metrics(source=None, **kw) -> str:
    """Prometheus text exposition for SOURCE (keyword arguments as for `ctscope.stats`)."""
    return exposition(stats(source, **kw))
