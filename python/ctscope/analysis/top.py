"""`ctscope top`: who holds the most entries (or moves the most bytes/packets)."""

from __future__ import annotations

import re

import polars as pl

from ctscope.analysis.sources import Source, needed_columns, open_source, where_filter
from ctscope.errors import BadArgument

# Grouping keys per --by. `service` is the pre-DNAT destination recorded in NAT_REV entries
# (the service IP and port a client asked for).
BY: dict[str, list[str]] = {
    "src": ["src"],
    "dst": ["dst"],
    "pair": ["src", "dst"],
    "service": ["proto", "orig_ip", "orig_port"],
    "dport": ["proto", "dport"],
    "proto": ["proto"],
    "node": ["node"],
}
METRICS = ("entries", "bytes", "packets")
_COUNTERS = ["a2b_bytes", "b2a_bytes", "a2b_packets", "b2a_packets"]


def top(source=None, *, by: str = "src", metric: str = "entries", n: int = 10, where: str | None = None,
        now_ns: int | None = None, **source_kw) -> pl.DataFrame:
    """The `n` largest groups of SOURCE's entries by `metric`, with each group's entries, bytes,
    packets and share of the metric's total (over the rows --where kept). `pair` counts each
    connection once, by its normal or NAT rev entry (NAT fwd stubs, which hold no counters,
    are left out unless --where names `type`)."""
    if by not in BY:
        raise BadArgument(f"--by {by!r}: expected one of {', '.join(BY)}")
    if metric not in METRICS:
        raise BadArgument(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    if n < 1:
        raise BadArgument(f"-n {n}: expected at least 1")
    if not isinstance(source, Source):
        # A live pin decodes only what the grouping, the metrics and --where read.
        base = [c for c in BY[by] if c != "node"] + ["type", *_COUNTERS]
        source_kw["columns"] = needed_columns(base, where)
    src = source if isinstance(source, Source) else open_source(source, now_ns=now_ns, **source_kw)
    if where and "expire" in where.lower():
        from ctscope.analysis.expiry import annotate  # --where names Felix's verdict columns

        lf = annotate(src)
    else:
        lf = src.frame
    if by == "node" and "node" not in lf.collect_schema().names():
        lf = lf.with_columns(pl.lit(src.snapshots[0].node).alias("node"))
    cond = where_filter(where, lf)
    if cond is not None:
        lf = lf.filter(cond)
    if by == "service":
        lf = lf.filter(pl.col("type") == "nat_rev")
    elif by == "pair" and not (where and re.search(r"\btype\b", where, re.IGNORECASE)):
        # A NAT'd connection has two entries: the NAT rev entry (client -> backend) holds its
        # counters, the NAT fwd entry is a stub (client -> service IP) with none. Counted as
        # pairs of their own, stubs rank service pairs by entries that carry 0 bytes and 0
        # packets: each connection is counted once, by its normal or NAT rev entry (--where
        # naming `type` decides for itself).
        lf = lf.filter(pl.col("type") != "nat_fwd")
    keys = BY[by]
    grouped = lf.group_by(keys).agg(
        pl.len().alias("entries"),
        (pl.col("a2b_bytes").fill_null(0) + pl.col("b2a_bytes").fill_null(0)).sum().alias("bytes"),
        (pl.col("a2b_packets").cast(pl.UInt64).fill_null(0) + pl.col("b2a_packets").cast(pl.UInt64).fill_null(0))
        .sum().alias("packets"),
    )
    q = (
        grouped.with_columns((pl.col(metric) / pl.col(metric).sum()).alias("share"))
        .sort([metric, *keys], descending=[True] + [False] * len(keys), nulls_last=True)
        .head(n)
    )
    with src.reading():
        return q.collect(engine="streaming")
