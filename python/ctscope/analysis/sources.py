"""SOURCE for every analysis command: a live pin, a snapshot file, or many snapshots.

* nothing            -> the live default pin (newest cali_v4_ct* under BPFFS/tc/globals)
* `X.parquet`, `X.arrow` (`.ipc`, `.feather`) -> one snapshot file
* a directory, or a glob (`snaps/**/*.parquet`) -> every snapshot under / matching it;
  `key=value` path components (`node=n1/date=2026-08-01/`) become columns (hive partitioning)
* anything else      -> a pinned map, dumped now (read-only)

Every snapshot carries its metadata (ctscope.snapshot_file, the format's owner) including the monotonic
reference time its `idle_s` was computed against, so that ages — and hence Felix's expiry
verdicts — come out the same offline as live. Files are scanned lazily (polars streaming),
so a fleet of snapshots is never loaded whole.

Internally each row also carries `_snap` (index into Source.snapshots) and `_now_ns` (its
snapshot's reference time), so per-snapshot questions (the NAT fwd -> rev lookup, stats
per node) never mix snapshots. `Source.scan()` hides them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob as globmod
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from ctscope.errors import BadArgument, SnapshotError
from ctscope.snapshot_file import META_KEY, SUFFIX_KINDS, kind_of, read_metadata
SNAP, NOW = "_snap", "_now_ns"
INTERNAL = (SNAP, NOW)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One map dump: where it came from and what its metadata says."""

    path: str
    kind: str  # live | parquet | arrow
    meta: dict
    partitions: dict[str, str]
    now_ns: int  # reference monotonic time for ages (the dump's, or --now-ns)

    @property
    def node(self) -> str:
        return str(self.partitions.get("node") or self.meta.get("hostname") or "")

    @property
    def map_name(self) -> str:
        return str(self.meta.get("map_name") or "")

    @property
    def max_entries(self) -> int:
        return int(self.meta.get("max_entries") or 0)

    @property
    def mono_ns(self) -> int:
        return int(self.meta.get("mono_ns") or self.meta.get("now_ns") or 0)

    @property
    def wall_ns(self) -> int:
        return int(self.meta.get("dump_start_wall_ns") or 0)

    @property
    def dump_seconds(self) -> float | None:
        start, end = self.meta.get("dump_start_wall_ns"), self.meta.get("dump_end_wall_ns")
        return (end - start) / 1e9 if start and end else None

    @property
    def sysctls(self) -> dict[str, int] | None:
        """nf_conntrack sysctls recorded at dump time (for "Auto" timeouts); None = unknown."""
        s = self.meta.get("nf_conntrack_sysctls")
        return dict(s) if isinstance(s, dict) else None

    def summary(self) -> dict:
        return {
            "source": self.path, "kind": self.kind, "node": self.node, "map_name": self.map_name,
            "map_path": self.meta.get("map_path"), "max_entries": self.max_entries, "layout": self.meta.get("layout"),
            "now_ns": self.now_ns, "dump_start": iso_time(self.wall_ns), "dump_start_wall_ns": self.wall_ns or None,
            "dump_seconds": self.dump_seconds,
            **({"walk": self.meta["walk"]} if isinstance(self.meta.get("walk"), dict) else {}),
            **({"partitions": self.partitions} if self.partitions else {}),
        }


@dataclasses.dataclass
class Source:
    """Rows (lazily) plus the snapshots they came from."""

    spec: str
    snapshots: list[Snapshot]
    parts: list[pl.LazyFrame]  # one per snapshot: public columns + partition columns + _snap + _now_ns
    files: bool  # True when rows are read from files (errors then name a snapshot)

    @property
    def frame(self) -> pl.LazyFrame:
        """All snapshots' rows as one LazyFrame. Questions that pair rows within a snapshot
        (Felix's NAT fwd -> rev lookup) go part by part instead, so that memory holds one
        snapshot at a time however many there are."""
        return self.parts[0] if len(self.parts) == 1 else pl.concat(self.parts, how="diagonal_relaxed")

    @property
    def single(self) -> bool:
        return len(self.snapshots) == 1

    @property
    def now_ns(self) -> int:
        if not self.single:
            raise BadArgument(f"{self.spec}: holds {len(self.snapshots)} snapshots; this needs exactly one")
        return self.snapshots[0].now_ns

    def scan(self) -> pl.LazyFrame:
        """The rows without the internal columns."""
        return self.frame.drop(INTERNAL)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Turn polars' errors while reading files into one-line SnapshotErrors (exit 2)."""
        try:
            yield
        except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError) as e:
            # Any polars error (damaged IPC buffers raise OutOfBoundsError, for one) or
            # panic while reading files is the file's fault, not a ctscope bug.
            if not self.files or isinstance(e, (FileNotFoundError, PermissionError)):
                raise
            raise SnapshotError(f"{self.spec}: unreadable snapshot data ({_one_line(e)})") from None


def open_source(source: str | os.PathLike[str] | None = None, *, now_ns: int | None = None, bpffs: str | None = None,
                ipv6: bool = False, layout: str = "auto", unverified: bool = False,
                columns: list[str] | None = None) -> Source:
    """Resolve SOURCE (see module doc). `now_ns` overrides every snapshot's reference time.
    `unverified` accepts Arrow snapshots without ctscope's CRC (see snapshot_file.read_metadata).
    `columns`: the public columns the caller will use; a live pin then decodes only these
    (snapshot files are scanned lazily, so polars reads only what a query uses anyway)."""
    pin = _live_pin(source, bpffs, ipv6)
    if pin is not None:
        return _live(pin, now_ns, layout, columns)
    spec = os.fspath(source)
    p = Path(spec)
    if any(ch in spec for ch in "*?["):
        root = _glob_root(spec)
        files = sorted(f for f in globmod.glob(spec, recursive=True) if _is_snapshot_file(Path(f)))
        if not files:
            raise FileNotFoundError(2, "no snapshot files (*.parquet, *.arrow) match", spec)
        return _files(spec, [Path(f) for f in files], root, now_ns, unverified)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if _is_snapshot_file(f))
        if not files:
            raise BadArgument(f"{spec}: a directory without snapshot files (*.parquet, *.arrow); expected a pinned "
                              "map, a snapshot file or a directory of snapshots")
        return _files(spec, files, p, now_ns, unverified)
    if kind_of(p):
        if not p.exists():
            raise FileNotFoundError(2, "no such snapshot file", spec)
        return _files(spec, [p], None, now_ns, unverified)
    raise AssertionError("_live_pin takes every other SOURCE")


def _on_bpffs(p: Path) -> bool:
    from ctscope._native import on_bpffs

    try:
        return on_bpffs(os.path.realpath(p))
    except Exception:  # noqa: BLE001 - unknown: let the live path say what is wrong
        return True


# ------------------------------------------------------------------------------------------ builders
_RAW = ("the analysis commands need decoded CT columns, which --layout raw does not give; "
        "use `ctscope dump --layout raw` for the bytes, or pick the map's layout (v2, v3-created, v3, v4)")


def needed_columns(base: list[str] | None, where: str | None = None) -> list[str] | None:
    """`base` plus the public columns --where names (None: every column). Names that are not
    public columns are left for where_filter to report."""
    if base is None:
        return None
    from ctscope._native import ct_columns
    from ctscope.analysis.expiry import EXPIRY_COLUMNS

    cols = list(dict.fromkeys(base))
    if where:
        try:
            from ctscope.pushdown import expand_networks

            names = pl.sql_expr(expand_networks(where)).meta.root_names()
        except Exception:  # where_filter reports bad SQL with its own message
            names = []
        public = ct_columns()
        cols += [n for n in names if n in public and n not in cols]
        if any("expire" in n for n in names):  # Felix's verdict columns: judging reads these
            cols += [n for n in EXPIRY_COLUMNS if n not in cols]
    return cols


def live_meta(dump, info, entries: int) -> dict:
    """A live dump's snapshot metadata, as a snapshot file of it would carry (plus this
    host's nf_conntrack sysctls, which "Auto" timeouts read)."""
    from ctscope import snapshot_file
    from ctscope._native import realtime_ns
    from ctscope.analysis.timeouts import read_sysctls

    meta = json.loads(snapshot_file.build_metadata(dump, info, entries, realtime_ns())[META_KEY])
    meta.setdefault("nf_conntrack_sysctls", read_sysctls())
    return meta


def _live(pin: str, now_ns: int | None, layout: str, columns: list[str] | None = None) -> Source:
    from ctscope.ctmap import dump_to_polars, open_map

    if layout == "raw":
        raise BadArgument(_RAW)
    m = open_map(pin, layout=layout)
    if columns is not None:
        from ctscope.analysis.expiry import KEY_WORDS

        if KEY_WORDS in columns:  # the key's bytes as u64 words (2 for IPv4 keys, 5 for IPv6)
            n = -(-m.info.key_size // 8)
            columns = [c for c in columns if c != KEY_WORDS] + [f"_kw{i}" for i in range(n)] + [
                f"_rkw{i}" for i in range(n)]
    d = m.dump(now_ns=now_ns, columns=columns)
    df = dump_to_polars(d)
    snap = Snapshot(pin, "live", live_meta(d, m.info, df.height), {}, int(d.now_ns))
    frame = df.lazy().with_columns(pl.lit(0, pl.UInt32).alias(SNAP), pl.lit(snap.now_ns, pl.UInt64).alias(NOW))
    return Source(pin, [snap], [frame], files=False)


def _files(spec: str, files: list[Path], root: Path | None, now_ns: int | None, unverified: bool = False) -> Source:
    from ctscope._native import ct_required_columns

    snaps: list[Snapshot] = []
    frames: list[pl.LazyFrame] = []
    for i, f in enumerate(files):
        meta = read_metadata(f, unverified)
        if meta.get("layout") == "raw":
            raise BadArgument(f"{f}: a raw-layout dump (key/value bytes); {_RAW}")
        parts = _partitions(f, root)
        kind = SUFFIX_KINDS[f.suffix.lower()]
        snap = Snapshot(str(f), kind, meta, parts, int(now_ns if now_ns is not None else meta["now_ns"]))
        snaps.append(snap)
        lf = pl.scan_parquet(f) if kind == "parquet" else pl.scan_ipc(f)
        try:
            names = lf.collect_schema().names()
        except (pl.exceptions.PolarsError, OSError) as e:
            raise SnapshotError(f"{f}: unreadable snapshot schema ({_one_line(e)})") from None
        missing = [c for c in ct_required_columns() if c not in names]
        if missing:
            raise SnapshotError(f"{f}: no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}; "
                                "expected a decoded ctscope snapshot")
        if now_ns is not None and now_ns != int(meta["now_ns"]):
            lf = lf.with_columns(((pl.lit(now_ns, pl.Int64) - pl.col("last_seen_ns").cast(pl.Int64)) / 1e9).alias("idle_s"))
        extra = [pl.lit(i, pl.UInt32).alias(SNAP), pl.lit(snap.now_ns, pl.UInt64).alias(NOW)]
        # Many snapshots, or one inside a hive-partitioned directory: say which one each row
        # is from (a one-node dataset has the same columns as a fleet's).
        if len(files) > 1 or parts:
            extra += [pl.lit(str(f)).alias("snapshot")]
            if "node" not in parts:
                extra.append(pl.lit(snap.node).alias("node"))
            extra += [_partition_value(k, v) for k, v in parts.items()]
        frames.append(lf.with_columns(extra))
    return Source(spec, snaps, frames, files=True)


def _partition_value(key: str, value: str) -> pl.Expr:
    if key == "date":
        try:
            return pl.lit(dt.date.fromisoformat(value)).alias(key)
        except ValueError:
            pass
    return pl.lit(value).alias(key)


def _partitions(f: Path, root: Path | None) -> dict[str, str]:
    parts = f.parent.relative_to(root).parts if root is not None and f.is_relative_to(root) else f.parent.parts
    out = {}
    for part in parts:
        if "=" in part:
            k, v = part.split("=", 1)
            if k and k not in ("snapshot", SNAP, NOW):
                out[k] = v
    return out


def _is_snapshot_file(f: Path) -> bool:
    # Dot-files are ctscope.outfile's in-progress temporaries.
    return kind_of(f) is not None and not f.name.startswith(".") and f.is_file()


def _glob_root(pattern: str) -> Path:
    parts = []
    for part in Path(pattern).parts:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def iso_time(wall_ns: int) -> str | None:
    """A wall-clock time in ns as ISO 8601 UTC to the millisecond (None for 0: unknown)."""
    if not wall_ns:
        return None
    return dt.datetime.fromtimestamp(wall_ns / 1e9, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")


# ------------------------------------------------------------------------------------------ public API
def scan(source: str | os.PathLike[str] | None = None, **kw) -> pl.LazyFrame:
    """A LazyFrame of SOURCE's entries (public schema; many snapshots add `snapshot`, `node`
    and partition columns). A live pin is `ctscope.scan_map`: read at each collect, decoding
    only the columns and rows the query needs."""
    pin = _live_pin(source, kw.get("bpffs"), kw.get("ipv6", False))
    if pin is None:
        return open_source(source, **kw).scan()
    from ctscope.ctmap import scan_map

    if kw.get("layout") == "raw":
        raise BadArgument(_RAW)
    return scan_map(pin, layout=kw.get("layout") or "auto", now_ns=kw.get("now_ns"))


def _live_pin(source, bpffs: str | None, ipv6: bool) -> str | None:
    """The pin SOURCE names when it is a live map (open_source's rule), else None."""
    if source is None:
        from ctscope.pins import DEFAULT_BPFFS, default_ct_pin

        return str(default_ct_pin(bpffs or DEFAULT_BPFFS, ipv6))
    spec = os.fspath(source)
    p = Path(spec)
    if any(ch in spec for ch in "*?[") or p.is_dir() or kind_of(p):
        return None
    if p.is_file() and not _on_bpffs(p):
        raise BadArgument(f"{spec}: not a file ctscope reads; expected a pinned map on a bpffs, a snapshot file "
                          f"({', '.join(SUFFIX_KINDS)}), or a directory or glob of snapshots")
    return spec


def read(source: str | os.PathLike[str] | None = None, **kw) -> pl.DataFrame:
    """A DataFrame of SOURCE's entries (see `scan`)."""
    src = open_source(source, **kw)
    with src.reading():
        return src.scan().collect()


def where_filter(where: str | None, frame: pl.LazyFrame) -> pl.Expr | None:
    """--where as an expression checked against `frame`'s columns (public + derived)."""
    from ctscope.export import parse_where

    schema = frame.collect_schema()
    visible = pl.Schema({k: v for k, v in schema.items() if k not in INTERNAL})
    return parse_where(where, visible)
