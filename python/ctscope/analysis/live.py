"""A live map over time: `ctscope watch` (screen and events) and `ctscope serve` (exporter).

Each refresh is one dump of the map (sources.open_source), judged by Felix's rules once
(expiry.judged_parts), kept as a *generation*: the columns diff.side() compares plus the
expiry code. Stats figures come from that generation's cube (stats.cube_query/summarize),
and what changed since the previous refresh from diff.classify() joined on the CT key:
the same classifier `ctscope diff` uses for two snapshots. Memory holds two generations at
most (the previous one and the one being read).

Changes are named as `conntrack -E` does: new, gone, updated (diff's "changed": counters,
last_seen, flags, type or TCP state moved), recreated (the key was deleted and made again:
counters or last_seen went backwards, or another `created` time). Between two refreshes a
flow that came and went is never seen, and several updates are one.
"""

from __future__ import annotations

import dataclasses
import os
import time

import polars as pl

from ctscope.analysis import stats as stats_mod
from ctscope.analysis.diff import COLLISION, KEY, KEY_HASH, SIDE_INPUT, classify, key_hash, side
from ctscope.analysis.expiry import _CODE, EXPIRY_COLUMNS, judged_parts, timeouts_for
from ctscope.analysis.sources import Snapshot, iso_time, needed_columns, open_source
from ctscope.analysis.timeouts import Timeouts
from ctscope.errors import BadArgument

EVENTS = ("new", "gone", "updated", "recreated")
ENGINE = "streaming"  # measured: ~15 % less CPU per refresh than the in-memory engine on 1M entries
EVENT_OF_CHANGE = {"new": "new", "gone": "gone", "changed": "updated", "recreated": "recreated"}


@dataclasses.dataclass
class Generation:
    """One refresh's dump: the rows (diff.side() columns + `_expire_code`) and its figures."""

    frame: pl.DataFrame
    snapshot: Snapshot
    summary: dict  # stats.summarize() figures
    read_s: float  # wall time of the dump itself
    refresh_s: float  # wall time of the whole refresh (dump, judging, cube, diff)
    cpu_s: float  # CPU time of the whole refresh (every thread)

    @property
    def mono_ns(self) -> int:
        return self.snapshot.mono_ns

    @property
    def wall_ns(self) -> int:
        return self.snapshot.wall_ns


@dataclasses.dataclass
class Refresh:
    gen: Generation
    interval_s: float | None  # since the previous refresh (monotonic); None on the first
    counts: dict[str, int]  # EVENTS -> how many flows
    events: pl.DataFrame | None  # every changed flow (events mode); None otherwise
    top_bytes: pl.DataFrame | None  # busiest flows by byte rate over the interval
    top_packets: pl.DataFrame | None

    def rate(self, event: str) -> float | None:
        return self.counts[event] / self.interval_s if self.interval_s else None


class Watcher:
    """Refreshes of one live map (PIN, or the newest default pin, resolved at every refresh so
    that a resized or upgraded map is followed)."""

    def __init__(self, pin: str | None = None, *, bpffs: str | None = None, ipv6: bool = False, layout: str = "auto",
                 where: str | None = None, timeouts=None, felix_config=None, top: int = 5, events: bool = False):
        self.pin, self.bpffs, self.ipv6, self.layout = pin, bpffs, ipv6, layout
        self.where, self.timeouts, self.felix_config = where, timeouts, felix_config
        self.top, self.events = top, events
        self.prev: Generation | None = None
        self._t: Timeouts | None = None
        return_freed_memory()

    def read(self) -> Generation:
        t0, c0 = time.perf_counter(), time.process_time()
        # Only what a refresh reads is decoded: side()'s columns, Felix's verdict's, --where's.
        src = open_source(self.pin, bpffs=self.bpffs, ipv6=self.ipv6, layout=self.layout,
                          columns=needed_columns([*SIDE_INPUT, *EXPIRY_COLUMNS], self.where))
        if src.files:
            raise BadArgument(f"{src.spec}: a snapshot file; watch and serve read a live pin")
        if self._t is None:
            self._t = timeouts_for(src, self.timeouts, self.felix_config)
        (lf,) = judged_parts(src, timeouts=self._t, where=self.where, reason_codes=True)
        frame = compact(side(lf, _CODE).with_columns(key_hash())).collect(engine=ENGINE)
        snap = src.snapshots[0]
        del src, lf  # the full dump: only the generation's columns stay
        c = stats_mod.with_reasons(stats_mod.cube_query(frame.lazy()).collect())
        summary = stats_mod.summarize(c, snap.max_entries)
        summary["timeouts"] = self._t.spec()
        return Generation(frame, snap, summary, snap.dump_seconds or 0.0, time.perf_counter() - t0,
                          time.process_time() - c0)

    def refresh(self) -> Refresh:
        """One dump, judged, summarised and compared with the previous one."""
        t0, c0 = time.perf_counter(), time.process_time()
        gen = self.read()
        prev, self.prev = self.prev, None  # two generations at most, also while comparing
        counts = dict.fromkeys(EVENTS, 0)
        events = top_b = top_p = None
        interval = None
        if prev is not None and prev.snapshot.path == gen.snapshot.path:
            interval = (gen.mono_ns - prev.mono_ns) / 1e9 or None
            got, events, top_b, top_p = self._compare(prev.frame, gen.frame, interval)
            if got.filter(pl.col(COLLISION)).height:  # a 64-bit hash collision: classify exactly
                got, events, top_b, top_p = self._compare(prev.frame, gen.frame, interval, exact=True)
            for change, n in got.group_by("change").agg(pl.col("len").sum()).iter_rows():
                counts[change] = int(n)
        del prev
        gen.refresh_s = time.perf_counter() - t0
        gen.cpu_s = time.process_time() - c0
        self.prev = gen
        return Refresh(gen, interval, counts, events, top_b, top_p)

    def _compare(self, old: pl.DataFrame, new: pl.DataFrame, interval: float | None, exact: bool = False):
        """(counts by change and COLLISION, events or None, top by bytes/s, top by packets/s).

        By default the join is on the key hash and over the columns classify judges only
        (a join output of every column of both generations costs more than the dump); the
        display columns are looked up for the rows shown. `exact`: the whole rows, on the key."""
        if exact:
            j = classify(expand(old).drop(KEY_HASH), expand(new).drop(KEY_HASH), interval)
        else:
            j = classify(old.lazy().select(SLIM), new.lazy().select(SLIM), interval)
        j = j.filter(pl.col("change") != "unchanged")
        if COLLISION not in j.collect_schema().names():
            j = j.with_columns(pl.lit(False).alias(COLLISION))
        j = j.with_columns(pl.col("change").replace_strict(EVENT_OF_CHANGE, return_dtype=pl.String))
        events = None
        # Materialised once (only changed rows): a plan with three consumers of the join would
        # compute the join three times. A hash collision between two keys whose compared values
        # are all equal stays "unchanged" and unnoticed: both are counted as unchanged flows.
        changed = j.collect(engine=ENGINE)
        if self.events:
            events = changed if exact else _displayed(changed, old, new)
            changed = events
        j = changed.lazy()
        tops = ("bytes_per_s", "packets_per_s")
        moving = j.filter(pl.col("change") != "gone")
        parts = [j.group_by("change", COLLISION).len().with_columns(pl.lit("count").alias("_top")),
                 *(moving.top_k(self.top, by=c).sort(c, descending=True).with_columns(pl.lit(c).alias("_top"))
                   for c in tops)]
        out = pl.concat(parts, how="diagonal_relaxed").collect()
        got = out.filter(pl.col("_top") == "count").select("change", COLLISION, "len")
        shown = out.filter(pl.col("_top") != "count")
        if not exact and not self.events:
            shown = _displayed(shown, old, new)
        cols = ["proto", "src", "sport", "dst", "dport", "bytes_per_s", "packets_per_s"]
        return got, events, *(shown.filter(pl.col("_top") == c).select(cols) for c in tops)


# What classify judges (plus the key and its hash); the rest is looked up for rows shown.
SLIM = [KEY_HASH, *KEY, "type", "tcp_state", "flags", "last_seen_ns", "created_ns", "bytes", "packets"]
DISPLAY = ["src", "sport", "dst", "dport"]


def _displayed(rows: pl.DataFrame, old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """`rows` (classified on slim frames) with their display columns: the new generation's,
    the old one's for gone rows."""
    few = rows.height < 10_000
    hashes = rows.get_column(KEY_HASH).implode() if few else None

    def disp(gen: pl.DataFrame, suffix: str) -> pl.LazyFrame:
        lf = gen.lazy()
        if few:
            lf = lf.filter(pl.col(KEY_HASH).is_in(hashes))
        return expand(lf.collect()).select(KEY_HASH, *(pl.col(c).alias(c + suffix) for c in DISPLAY))

    return (rows.lazy().join(disp(new, ""), on=KEY_HASH, how="left")
            .join(disp(old, "_old"), on=KEY_HASH, how="left")
            .with_columns(pl.coalesce(c, c + "_old").alias(c) for c in DISPLAY)
            .drop([c + "_old" for c in DISPLAY]).collect())


def return_freed_memory() -> None:
    """glibc: buffers over 64 KiB are mmapped (unmapped when freed) and at most two arenas, as
    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_ARENA_MAX=2 would do. A long-running reader would
    otherwise keep every freed dump in its heap (serve: 1.3 GB instead of ~0.75 GB at 1M
    entries). The environment variables, when set, win. No-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(-8, 2)  # M_ARENA_MAX


def compact(lf: pl.LazyFrame) -> pl.LazyFrame:
    """A generation's own copy of its strings. A string column of the dump points into buffers
    shared by the whole batch: keeping one column alive would keep the entire dump in memory.
    src/dst are the key's addresses (which one, the row's `_src_is_a` says): only two columns
    are copied; type and tcp_state become categoricals (a handful of values)."""
    return (lf.with_columns((pl.col("src") == pl.col("addr_a")).alias("_src_is_a")).drop("src", "dst")
            .with_columns(*(pl.concat_str(pl.col(c), pl.lit("")).alias(c) for c in ("addr_a", "addr_b")),
                          pl.col("type", "tcp_state").cast(pl.Categorical)))


def expand(frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """A compact generation in diff.side()'s shape again (src/dst from the key's addresses)."""
    a, b = pl.col("addr_a"), pl.col("addr_b")
    return frame.lazy().with_columns(pl.when(pl.col("_src_is_a")).then(a).otherwise(b).alias("src"),
                                     pl.when(pl.col("_src_is_a")).then(b).otherwise(a).alias("dst"))


def event_rows(r: Refresh) -> pl.DataFrame:
    """`watch --events` rows: wall-clock time of the refresh that saw the change, the event,
    the entry's key and columns (the old generation's for `gone`), byte/packet deltas."""
    if r.events is None or r.events.height == 0:
        return pl.DataFrame()
    ts = iso_time(r.gen.wall_ns)
    return r.events.select(
        pl.lit(ts).alias("time"), pl.col("change").alias("event"), *KEY, "src", "sport", "dst", "dport", "type",
        pl.coalesce("tcp_state_new", "tcp_state_old").alias("tcp_state"),
        pl.coalesce("bytes_new", "bytes_old").alias("bytes"), pl.coalesce("packets_new", "packets_old").alias("packets"),
        "bytes_delta", "packets_delta",
    ).sort(pl.col("event").replace_strict({e: i for i, e in enumerate(EVENTS)}, return_dtype=pl.UInt8),
           maintain_order=True)


def fill_line(s: dict) -> str:
    """Fill now and after Felix's next sweep, judged by stats' own verdict (Felix's thresholds)."""
    ag = s["autogrow"]
    fill = f"{s['fill_ratio']:.1%}" if s["fill_ratio"] is not None else "?"
    after = f"{s['fill_ratio_after_sweep']:.1%}" if s["fill_ratio_after_sweep"] is not None else "?"
    return (f"{fill} {s['total_entries']:,}/{s['map_size']:,} · after sweep {after} · "
            f"grows >{ag['grow_at']:.0%}: {ag['verdict']}")
