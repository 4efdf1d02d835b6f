"""`ctscope stats`: the figures of `calico-node -bpf conntrack stats`, and more.

Calico's command (felix/cmd/calico-bpf/commands/conntrack.go) counts NAT_FWD entries as
"NAT connections" and everything else as "connections"; TCP states are counted over TCP
connections with Calico's display rule. On top: the fill now and after Felix's next sweep
(judged by ctscope.fill: a full map, Felix's auto-grow thresholds), counts by type, protocol
and state, an idle-time histogram and the number of entries Felix's next sweep would delete.

One pass over the rows: they are grouped by (snapshot, proto, type, tcp_state,
expire_reason, idle bucket) into a small "cube", and every figure is read off the cube.
"""

from __future__ import annotations

import math

import polars as pl

from ctscope import fill
from ctscope.analysis.expiry import _CODE, EXPIRY_COLUMNS, REASON_OF_CODE
from ctscope.analysis.chunked import open_chunked
from ctscope.analysis.sources import SNAP, Source, needed_columns, open_source
from ctscope.fill import GROW_AT, GROW_SUSTAINED_AT

# Idle-time histogram edges (seconds), at Felix's default timeouts: ICMP 5 s, SYN-SENT 20 s,
# UDP 60 s, generic 10 min, established 1 h.
IDLE_EDGES = [1, 5, 20, 60, 600, 3600, 6 * 3600, 86400]
IDLE_LABELS = ["<1s", "1-5s", "5-20s", "20s-1m", "1-10m", "10m-1h", "1-6h", "6h-1d", ">=1d"]

PROTO_NAMES = {1: "icmp", 4: "ipip", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}
TCP_STATES = {"ESTABLISHED": "tcp_established", "CLOSED": "tcp_closed", "RESET": "tcp_reset", "SYN-SENT": "tcp_syn_sent"}
TYPES = ["normal", "nat_fwd", "nat_rev"]
# What the cube reads: a live pin decodes only these (plus --where's).
STATS_COLUMNS = ["proto", "tcp_state", "idle_s", *EXPIRY_COLUMNS]


def proto_name(p: int) -> str:
    return PROTO_NAMES.get(int(p), str(int(p)))


def idle_bucket() -> pl.Expr:
    """Index into IDLE_LABELS (negative idle, i.e. last_seen after the reference, counts as <1s)."""
    return pl.sum_horizontal([(pl.col("idle_s") >= e).cast(pl.UInt8) for e in IDLE_EDGES]).cast(pl.UInt8)


def cube(src: Source, *, timeouts=None, felix_config=None, where: str | None = None) -> pl.DataFrame:
    """Entry counts (and idle seconds summed) per snapshot/proto/type/tcp_state/expire_reason/idle
    bucket. Rows are judged and counted chunk by chunk (analysis.chunked): memory holds one
    chunk, the NAT fwd entries' narrow columns and the rev lookup's keys, however many
    entries and snapshots there are."""
    from ctscope.analysis.chunked import StreamedSource, judged_chunks
    from ctscope.analysis.expiry import judged_parts, timeouts_for

    t = timeouts_for(src, timeouts, felix_config)
    if not isinstance(src, StreamedSource):
        with src.reading():
            small = all(p.select(pl.len()).collect().item() <= WHOLE_QUERY_ROWS for p in src.parts)
        if small:  # one polars query a snapshot: faster for files of up to a few million rows
            cubes = []
            for lf in judged_parts(src, timeouts=t, where=where, reason_codes=True):
                with src.reading():
                    cubes.append(cube_query(lf).collect(engine="streaming"))
            return with_reasons(pl.concat(cubes, how="vertical_relaxed"))
    parts = [cube_query(df.lazy()).collect() for df in
             judged_chunks(src, t, columns=[SNAP, *_CUBE_INPUT], where=where, reason_codes=True)]
    if not parts:
        parts = [cube_query(src.parts[0].select(SNAP, *_CUBE_INPUT).with_columns(
            pl.lit(0, pl.UInt8).alias(_CODE)).clear()).collect()]
    c = pl.concat(parts, how="vertical_relaxed")
    if len(parts) > 1:
        c = c.group_by(_CUBE_KEYS).agg(pl.col("n").sum().cast(pl.UInt32), pl.col("idle_sum").sum(),
                                       pl.col("idle_max").max())
    return with_reasons(c)


def _open(source, now_ns: int | None, kw: dict) -> Source:
    """A live pin that can hold up to WHOLE_QUERY_ROWS entries is dumped whole and judged by
    one query, as a snapshot of that size is (at 1M entries 0.32 s of work against 0.36 s
    chunk by chunk); a larger one is read chunk by chunk (bounded memory)."""
    from ctscope.analysis.sources import _live_pin
    from ctscope.ctmap import open_map

    pin = _live_pin(source, kw.get("bpffs"), kw.get("ipv6", False))
    if pin is not None and open_map(pin).info.max_entries <= WHOLE_QUERY_ROWS:
        return open_source(source, now_ns=now_ns, **kw)
    return open_chunked(source, now_ns=now_ns, **kw)


_CUBE_INPUT = ["proto", "type", "tcp_state", "idle_s"]
# Snapshots (and in-memory sources) of at most this many rows are judged by one polars query
# (expiry.with_expiry): at 1M rows 0.45 s and 240 MiB against 0.62 s and 330 MiB chunk by
# chunk; at 10M it peaked at 1.05 GiB, chunk by chunk 0.73 GiB (issue 12: <= 1 GiB).
WHOLE_QUERY_ROWS = 3_000_000
_CUBE_KEYS = [SNAP, "proto", "type", "tcp_state", _CODE, "_idle_bucket"]


def cube_query(lf: pl.LazyFrame) -> pl.LazyFrame:
    """The cube of judged rows (`_expire_code` from judged_parts(reason_codes=True)); rows
    without `_snap` count as snapshot 0 (live.py's generations)."""
    if SNAP not in lf.collect_schema().names():
        lf = lf.with_columns(pl.lit(0, pl.UInt32).alias(SNAP))
    return (
        lf.with_columns(idle_bucket().alias("_idle_bucket"))
        .group_by(_CUBE_KEYS)
        .agg(pl.len().alias("n"), pl.col("idle_s").sum().alias("idle_sum"), pl.col("idle_s").max().alias("idle_max"))
    )


def with_reasons(c: pl.DataFrame) -> pl.DataFrame:
    return c.with_columns(
        pl.col(_CODE).replace_strict(REASON_OF_CODE, default=None, return_dtype=pl.String).alias("expire_reason"))


def summarize(c: pl.DataFrame, max_entries: int) -> dict:
    """Every figure for one snapshot's (or the sum of several snapshots') cube rows."""

    def n(expr: pl.Expr | None = None) -> int:
        d = c if expr is None else c.filter(expr)
        return int(d["n"].sum() or 0)

    fwd = pl.col("type") == "nat_fwd"
    conns = ~fwd
    total = n()
    nat = n(fwd)
    connections = total - nat
    tcp = n(conns & (pl.col("proto") == 6))
    udp = n(conns & (pl.col("proto") == 17))
    expired = n(pl.col("expire_reason").is_not_null())
    out = {
        "map_size": max_entries,
        "total_connections": connections,
        "total_entries": total,
        "nat_connections": nat,
        "tcp": tcp,
        "udp": udp,
        "others": connections - tcp - udp,
    }
    for state, key in TCP_STATES.items():
        out[key] = n(conns & (pl.col("proto") == 6) & (pl.col("tcp_state") == state))
    # Fill now and after Felix's sweep; a walk that read more entries than the map holds
    # (it changed under the dump) is capped at 1.0 and flagged, never shown as > 100 %.
    now = fill.judge(total, max_entries)
    after = fill.judge(total - expired, max_entries)
    out.update({
        "expired": expired,
        **now.as_dict(),
        "fill_ratio_after_sweep": after.ratio,
        "autogrow": {
            "grow_at": GROW_AT, "grow_sustained_at": GROW_SUSTAINED_AT,
            "verdict": fill.sweep_verdict(after.ratio),
        },
        "by_type": {t: n(pl.col("type") == t) for t in TYPES} | {
            str(t): int(k) for t, k in c.filter(~pl.col("type").is_in(TYPES)).group_by("type").agg(pl.col("n").sum()).iter_rows()
        },
        "by_protocol": {proto_name(p): int(k) for p, k in
                        c.group_by("proto").agg(pl.col("n").sum()).sort("n", descending=True).iter_rows()},
        "by_state": {s: int(k) for s, k in
                     c.filter(pl.col("tcp_state").is_not_null()).group_by("tcp_state").agg(pl.col("n").sum())
                     .sort("n", descending=True).iter_rows()},
        "expired_by_reason": {r: int(k) for r, k in
                              c.filter(pl.col("expire_reason").is_not_null()).group_by("expire_reason")
                              .agg(pl.col("n").sum()).sort("n", descending=True).iter_rows()},
        "idle_histogram": _histogram(c),
        "idle_seconds_sum": float(c["idle_sum"].sum() or 0.0),
        "oldest_idle_s": float(c["idle_max"].max()) if c.height else None,
    })
    return out


def _histogram(c: pl.DataFrame) -> list[dict]:
    counts = dict(c.group_by("_idle_bucket").agg(pl.col("n").sum()).iter_rows())
    lows = [0, *IDLE_EDGES]
    highs = [*IDLE_EDGES, math.inf]
    return [{"bucket": IDLE_LABELS[i], "ge_s": lows[i], "lt_s": highs[i] if highs[i] != math.inf else None,
             "entries": int(counts.get(i, 0))} for i in range(len(IDLE_LABELS))]


def stats(source=None, *, timeouts=None, felix_config=None, where: str | None = None, now_ns: int | None = None,
          **source_kw) -> dict:
    """Stats for SOURCE (see `ctscope.scan`). Top-level keys are the totals over all snapshots
    (for one snapshot: its figures); `snapshots` lists each snapshot's own figures."""
    if not isinstance(source, Source):
        source_kw["columns"] = needed_columns(STATS_COLUMNS, where)
    src = source if isinstance(source, Source) else _open(source, now_ns, source_kw)
    c = cube(src, timeouts=timeouts, felix_config=felix_config, where=where)
    from ctscope.analysis.expiry import timeouts_for

    per = []
    for i, snap in enumerate(src.snapshots):
        figures = summarize(c.filter(pl.col(SNAP) == i), snap.max_entries)
        per.append({**snap.summary(), **figures})
    total = summarize(c, sum(s.max_entries for s in src.snapshots))
    return {
        "source": src.spec,
        **({"where": where} if where else {}),
        **(per[0] if src.single else {"snapshot_count": len(per), **total}),
        "timeouts": timeouts_for(src, timeouts, felix_config).spec(),
        "snapshots": per,
    }
