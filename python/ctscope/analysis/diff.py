"""`ctscope diff OLD NEW`: flows new, gone and changed between two snapshots.

Flows are matched by their CT key (proto, addr_a, port_a, addr_b, port_b). Byte and packet
deltas are per flow; rates divide them by the time between the two dumps — the monotonic
clock difference when both dumps come from the same boot of the same host (exact), else the
wall-clock difference. A flow whose counters or last_seen went backwards was deleted and
re-created in between: it is reported as `recreated`, its delta being its new counters.
"""

from __future__ import annotations

import dataclasses

import polars as pl

from ctscope.analysis.sources import Source, open_source, where_filter
from ctscope.errors import BadArgument

KEY = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
SAME_BOOT_TOLERANCE_NS = 2_000_000_000  # boot time = wall - mono, jitters by the two clock reads
CHANGES = ("new", "gone", "changed", "recreated", "unchanged")
KEY_HASH = "_key_hash"  # optional: a u64 hash of KEY in both frames makes classify's join ~4x cheaper
COLLISION = "_key_collision"


def key_hash() -> pl.Expr:
    return pl.struct(KEY).hash().alias(KEY_HASH)


@dataclasses.dataclass
class Diff:
    flows: pl.DataFrame
    summary: dict


def _interval(old: Source, new: Source) -> tuple[float | None, str]:
    a, b = old.snapshots[0], new.snapshots[0]
    boot_a = a.meta.get("boot_wall_ns")
    boot_b = b.meta.get("boot_wall_ns")
    same_boot = (a.node == b.node and boot_a is not None and boot_b is not None
                 and abs(int(boot_a) - int(boot_b)) < SAME_BOOT_TOLERANCE_NS)
    if same_boot and a.mono_ns and b.mono_ns:
        return (b.mono_ns - a.mono_ns) / 1e9, "monotonic"
    if a.wall_ns and b.wall_ns:
        return (b.wall_ns - a.wall_ns) / 1e9, "wall"
    return None, "unknown"


def _side(src: Source, where: str | None) -> pl.LazyFrame:
    lf = src.scan()
    cond = where_filter(where, lf)
    if cond is not None:
        lf = lf.filter(cond)
    return side(lf)


# The public columns `side` reads (a live source decodes only these: live.py).
SIDE_INPUT = [*KEY, "src", "sport", "dst", "dport", "type", "tcp_state", "flags", "last_seen_ns", "created_ns",
              "idle_s", "a2b_bytes", "b2a_bytes", "a2b_packets", "b2a_packets"]


def side(lf: pl.LazyFrame, *extra: str) -> pl.LazyFrame:
    """The columns `classify` compares (and `extra` ones), from entries in the public schema
    (live.py keeps the generations of a live map in this shape)."""
    return lf.select(
        *KEY, "src", "sport", "dst", "dport", "type", "tcp_state", "flags", "last_seen_ns", "created_ns", "idle_s",
        (pl.col("a2b_bytes").fill_null(0) + pl.col("b2a_bytes").fill_null(0)).alias("bytes"),
        (pl.col("a2b_packets").cast(pl.UInt64).fill_null(0) + pl.col("b2a_packets").cast(pl.UInt64).fill_null(0))
        .alias("packets"),
        *extra,
    )


def classify(o: pl.LazyFrame, n: pl.LazyFrame, dt_s: float | None) -> pl.LazyFrame:
    """Every flow of two dumps (`side` shape), joined on the CT key, with its `change`: new,
    gone, recreated (counters or last_seen went backwards, or another `created` time: the key
    was deleted and made again in between), changed, unchanged; byte/packet deltas and rates
    over `dt_s`. The one classifier of `diff` and of live.py's refresh-to-refresh changes.

    With a KEY_HASH column on both sides the join is on the hash; rows it paired whose keys
    differ (a 64-bit collision) are flagged in COLLISION: the caller then classifies again
    without the hash. Display columns (src, sport, dst, dport, idle_s) are passed through when
    the frames have them: live.py classifies slim frames and looks them up for the few rows shown."""
    have = set(o.collect_schema().names())
    hashed = KEY_HASH in have and KEY_HASH in n.collect_schema().names()
    if hashed:
        j = o.join(n, on=KEY_HASH, how="full", coalesce=True, suffix="_new").with_columns(
            pl.any_horizontal(pl.col(k).ne(pl.col(f"{k}_new")).fill_null(False) for k in KEY).alias(COLLISION),
            *[pl.coalesce(k, f"{k}_new").alias(k) for k in KEY])
    else:
        j = o.join(n, on=KEY, how="full", coalesce=True, suffix="_new")
    in_old, in_new = pl.col("last_seen_ns").is_not_null(), pl.col("last_seen_ns_new").is_not_null()
    went_back = (
        (pl.col("last_seen_ns_new") < pl.col("last_seen_ns"))
        | (pl.col("bytes_new") < pl.col("bytes")) | (pl.col("packets_new") < pl.col("packets"))
        | (pl.col("created_ns_new") != pl.col("created_ns")).fill_null(False)
    )
    moved = (
        (pl.col("last_seen_ns_new") != pl.col("last_seen_ns")) | (pl.col("bytes_new") != pl.col("bytes"))
        | (pl.col("packets_new") != pl.col("packets")) | (pl.col("flags_new") != pl.col("flags"))
        | (pl.col("type_new") != pl.col("type")) | pl.col("tcp_state_new").ne_missing(pl.col("tcp_state"))
    )
    change = (
        pl.when(~in_old).then(pl.lit("new"))
        .when(~in_new).then(pl.lit("gone"))
        .when(went_back).then(pl.lit("recreated"))
        .when(moved).then(pl.lit("changed"))
        .otherwise(pl.lit("unchanged"))
    )
    delta = lambda c: (  # noqa: E731
        pl.when(pl.col("change") == "new").then(pl.col(f"{c}_new").cast(pl.Int64))
        .when(pl.col("change") == "gone").then(pl.lit(None, pl.Int64))  # unknown: it moved 0 or more
        .when(pl.col("change") == "recreated").then(pl.col(f"{c}_new").cast(pl.Int64))
        .otherwise(pl.col(f"{c}_new").cast(pl.Int64) - pl.col(c).cast(pl.Int64))
    )
    rate = (lambda c: pl.col(c) / dt_s) if dt_s and dt_s > 0 else (lambda c: pl.lit(None, pl.Float64))
    either = lambda c: pl.coalesce(pl.col(f"{c}_new"), pl.col(c)).alias(c)  # noqa: E731
    return (
        j.with_columns(change.alias("change"))
        .with_columns(delta("bytes").alias("bytes_delta"), delta("packets").alias("packets_delta"))
        .with_columns(rate("bytes_delta").alias("bytes_per_s"), rate("packets_delta").alias("packets_per_s"))
        .select(
            "change", *KEY, *(either(c) for c in ("src", "sport", "dst", "dport") if c in have), either("type"),
            pl.col("tcp_state").alias("tcp_state_old"), pl.col("tcp_state_new"),
            pl.col("bytes").alias("bytes_old"), "bytes_new", "bytes_delta", "bytes_per_s",
            pl.col("packets").alias("packets_old"), "packets_new", "packets_delta", "packets_per_s",
            *(["idle_s_new"] if "idle_s" in have else []), *([KEY_HASH, COLLISION] if hashed else []),
        )
    )


def diff(old, new, *, where: str | None = None, all: bool = False, **source_kw) -> Diff:
    """Compare two single snapshots (or live pins). `all` keeps unchanged flows too."""
    srcs = [s if isinstance(s, Source) else open_source(s, **source_kw) for s in (old, new)]
    for s in srcs:
        if not s.single:
            raise BadArgument(f"{s.spec}: holds {len(s.snapshots)} snapshots; diff compares two single snapshots")
    o, n = (_side(s, where) for s in srcs)
    dt_s, clock = _interval(*srcs)
    flows = classify(o, n, dt_s)
    with srcs[0].reading(), srcs[1].reading():
        df = flows.collect()
    counts = dict(df.group_by("change").len().iter_rows())
    summary = {
        "old_snapshot": srcs[0].snapshots[0].summary(),
        "new_snapshot": srcs[1].snapshots[0].summary(),
        "interval_s": dt_s,
        "interval_clock": clock,
        **{c: int(counts.get(c, 0)) for c in CHANGES},
        "bytes_delta": int(df["bytes_delta"].sum() or 0),
        "packets_delta": int(df["packets_delta"].sum() or 0),
    }
    summary["bytes_per_s"] = summary["bytes_delta"] / dt_s if dt_s and dt_s > 0 else None
    summary["packets_per_s"] = summary["packets_delta"] / dt_s if dt_s and dt_s > 0 else None
    order = {c: i for i, c in enumerate(CHANGES)}
    if not all:
        df = df.filter(pl.col("change") != "unchanged")
    df = df.sort(pl.col("change").replace_strict(order, return_dtype=pl.UInt8), pl.col("bytes_delta").abs(),
                 descending=[False, True], maintain_order=True)
    return Diff(df, summary)
