"""The snapshot file format, one owner: which file names are snapshots and of which kind,
the metadata a snapshot records (built from a dump; read back and checked), the node it
names, and writing snapshots of both kinds.

* Parquet snapshots: key/value metadata `ctscope` (JSON), written by the Rust core
  (rust/src/parquet_file.rs, through `ctscope._native.ParquetFileWriter`): a dump's record
  batches go from the decoder to the encoder directly (`write_parquet(dump, ...)`), other
  frames cross through the Arrow C stream interface.
* Arrow snapshots: Arrow IPC files written by the Rust core (rust/src/ipc_file.rs, through
  `ctscope._native.ArrowFileWriter`; polars frames cross through the Arrow C stream
  interface, not copied): the schema carries the metadata as known before the first batch
  (no entry count yet), the footer's custom_metadata the final metadata plus
  `ctscope_crc32`, a CRC-32 of the bytes from offset 8 to the footer, so damage inside a
  batch is refused instead of read as data. Files of earlier versions (a hand-written
  writer; everything in the footer schema's metadata) read and verify the same way.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ctscope._native import ARROW_CRC_KEY as CRC_KEY
from ctscope._native import ARROW_META_CRC_KEY as META_CRC_KEY
from ctscope.errors import BadArgument, SnapshotError

if TYPE_CHECKING:  # polars is imported where it is used: `dump -o X.parquet` runs without it
    import polars as pl
    from ctscope._native import Dump

META_KEY = "ctscope"
SUFFIX_KINDS = {".parquet": "parquet", ".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow"}
SUFFIX = {"parquet": ".parquet", "arrow": ".arrow"}  # the suffix ctscope gives each kind

__all__ = ["CRC_KEY", "META_CRC_KEY", "META_KEY", "SUFFIX", "SUFFIX_KINDS", "build_metadata", "check_metadata", "kind_of", "node_name",
           "provisional", "read_metadata", "write_arrow", "write_parquet"]


def kind_of(path: str | os.PathLike[str]) -> str | None:
    """"parquet" or "arrow" by `path`'s suffix; None for any other name."""
    return SUFFIX_KINDS.get(Path(path).suffix.lower())


def node_name(override: str | None = None) -> str:
    """The node a snapshot names: `override` (--node), else $NODE_NAME (Kubernetes' downward
    API), else the host name."""
    return override or os.environ.get("NODE_NAME") or socket.gethostname()


# ------------------------------------------------------------------------------------------ building
def build_metadata(dump, info, entries: int, end_wall_ns: int, node: str | None = None) -> dict[str, str]:
    """What a snapshot file records so offline analysis answers like a live dump; `node`:
    an explicit --node (see node_name)."""
    from ctscope import __version__
    from ctscope.analysis.timeouts import read_sysctls
    from ctscope.export import walk_record

    meta = {
        "map_path": os.path.abspath(info.path),  # meaningful offline, wherever the command ran
        "map_name": info.name,
        "map_id": info.id,
        "map_type": info.map_type,
        "key_size": info.key_size,
        "value_size": info.value_size,
        "max_entries": info.max_entries,
        "map_flags": info.map_flags,
        "version": info.version,
        "family": info.family,
        "layout": dump.layout,
        "layout_reason": dump.layout_reason,
        "method": dump.method,
        "entries": entries,
        "now_ns": dump.now_ns,
        "mono_ns": dump.mono_ns,
        "dump_start_wall_ns": dump.wall_ns,
        "dump_end_wall_ns": end_wall_ns,
        "boot_wall_ns": dump.wall_ns - dump.mono_ns,
        "hostname": node_name(node),
        "ctscope_version": __version__,
        # What Felix's "Auto" timeouts read on this node, so offline expiry matches live.
        "nf_conntrack_sysctls": read_sysctls(),
        "walk": walk_record(dump, info, end_wall_ns),
    }
    return {META_KEY: json.dumps(meta)}


def provisional(kv: dict[str, str]) -> dict[str, str]:
    """Snapshot metadata as known before the first batch: no entry count or end time yet."""
    if META_KEY not in kv:
        return kv
    m = json.loads(kv[META_KEY])
    m.update(entries=None, dump_end_wall_ns=None, walk=None)
    return {**kv, META_KEY: json.dumps(m)}


# ------------------------------------------------------------------------------------------ writing
def _destination(target: str | os.PathLike[str] | IO[bytes]) -> str | int:
    """A path for the Rust writers, or the file descriptor of an open binary stream."""
    if isinstance(target, (str, os.PathLike)):
        return os.fspath(target)
    target.flush()  # what Python buffered goes first; the Rust side writes to its fd
    return target.fileno()


# Map readers for a Dump written to parquet when the caller does not choose: the encoder
# threads, not the read, set the pace, and one reader leaves them the cores (a 1M-entry
# dump on 2 cores: 0.89 s and 1.44 CPU-s against 0.93 s and 1.55 CPU-s with two readers).
PARQUET_READ_THREADS = 1

# Rows a Dump moves into a parquet file per call: the GIL is free meanwhile, and between
# calls Ctrl-C is seen and a progress line advances.
PARQUET_STEP_ROWS = 262_144


def write_parquet(source: Dump | Iterable[pl.DataFrame], schema: pl.Schema | None,
                  target: str | os.PathLike[str] | IO[bytes], metadata: Callable[[int], dict[str, str]] | None = None,
                  on_rows: Callable[[int], None] | None = None) -> int:
    """Write one parquet file (see the module doc); returns rows written. `source`: a Dump,
    whose batches go straight from the decoder to the file (polars is not involved), or
    polars frames of `schema`. `target`: a path (ctscope.outfile's) or an open binary
    stream with a file descriptor (stdout). `metadata(rows)`: the footer's key/value
    metadata; `on_rows(n)`: told as a Dump's rows are written."""
    from ctscope._native import Dump, ParquetFileWriter

    if isinstance(source, Dump):
        w = ParquetFileWriter(_destination(target), source)
        while n := w.write_dump(source, PARQUET_STEP_ROWS):
            if on_rows:
                on_rows(n)
    else:
        import polars as pl

        if schema is None:
            raise TypeError("write_parquet: frames need their schema")
        w = ParquetFileWriter(_destination(target), pl.DataFrame(schema=schema))
        for df in source:
            if df.height == 0:
                continue
            if df.schema != schema:
                df = df.cast(dict(schema))  # type: ignore[arg-type]
            w.write(_without_nulls(df))
    rows = w.rows
    w.finish(metadata(rows) if metadata else {})
    return rows


def write_arrow(frames: Iterable[pl.DataFrame], schema: pl.Schema, target: str | os.PathLike[str] | IO[bytes],
                metadata: Callable[[bool], dict[str, str]] | None = None) -> int:
    """Write `frames` as one Arrow IPC file (see the module doc); returns rows written.
    `target`: a path (ctscope.outfile's), or an open binary stream with a file descriptor
    (stdout). `metadata(final)` is called with final=False before the first batch (the
    schema's) and with final=True after the last (the footer's)."""
    import polars as pl

    from ctscope._native import ArrowFileWriter

    meta = metadata or (lambda _final: {})
    w = ArrowFileWriter(_destination(target), pl.DataFrame(schema=schema), meta(False))
    rows = 0
    for df in frames:
        rows += df.height
        if df.height == 0:
            continue
        if df.schema != schema:
            df = df.cast(dict(schema))  # type: ignore[arg-type]
        w.write(_without_nulls(df))
    w.finish(meta(True))
    return rows


def _without_nulls(df: pl.DataFrame) -> pl.DataFrame:
    """`df` without its Null-typed columns (`SELECT NULL AS note`): polars exports them with a
    buffer the Arrow C data interface does not allow, which the Rust writers refuse; they
    put them back, all null, from the file's schema (rust/src/python/output.rs)."""
    import polars as pl

    nulls = [c for c, t in df.schema.items() if t == pl.Null]
    return df.drop(nulls) if nulls and len(nulls) < df.width else df


# ------------------------------------------------------------------------------------------ reading
def read_metadata(path: str | os.PathLike[str], unverified: bool = False) -> dict:
    """The ctscope metadata of one snapshot file (parquet key/value metadata, or the Arrow
    IPC footer's). SnapshotError when it is unreadable or not a snapshot, when a field has
    the wrong type or range, when an Arrow snapshot's CRC does not match, or when it carries
    none (ctscope's writer always records one) unless `unverified`."""
    from ctscope._native import read_arrow_metadata

    p = Path(path)
    kind = kind_of(p)
    if kind is None:
        raise BadArgument(f"{p}: not a snapshot file name (expected .parquet or .arrow)")
    if kind == "parquet":
        import polars as pl

        try:
            kv = pl.read_parquet_metadata(p)
        except FileNotFoundError:
            raise
        except Exception as e:  # polars reports a bad footer as several error types
            raise SnapshotError(f"{p}: truncated or not a parquet file ({_one_line(e)})") from None
    else:
        try:
            kv, crc = read_arrow_metadata(str(p), verify=True)
        except BadArgument as e:
            raise SnapshotError(str(e)) from None
        if crc is None and META_KEY in kv and not unverified:
            raise SnapshotError(f"{p}: no {CRC_KEY} key in the footer, so its batches cannot be verified (ctscope "
                                "records one in every Arrow snapshot); read it anyway with `ctscope --unverified`")
    raw = kv.get(META_KEY)
    if raw is None:
        raise SnapshotError(f"{p}: not a ctscope snapshot (no {META_KEY!r} key in the file metadata; "
                            f"write snapshots with `ctscope dump -o` or `ctscope snapshot`)")
    try:
        meta = json.loads(raw)
        int(meta["now_ns"])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):  # RecursionError: nested too deep
        raise SnapshotError(f"{p}: corrupt ctscope metadata (expected JSON with now_ns)") from None
    if not isinstance(meta, dict):
        raise SnapshotError(f"{p}: corrupt ctscope metadata (expected a JSON object)")
    check_metadata(p, meta)
    return meta


# Numeric metadata fields: (range, required). JSON floats, strings, booleans are refused:
# ctscope writes integers, and a NaN/Infinity/1e30 would surface as nonsense later.
_INTS = {
    "now_ns": (2**64 - 1, True), "mono_ns": (2**64 - 1, False), "dump_start_wall_ns": (2**63 - 1, False),
    "dump_end_wall_ns": (2**63 - 1, False), "boot_wall_ns": (2**63 - 1, False), "max_entries": (2**32 - 1, False),
    "entries": (2**64 - 1, False), "key_size": (2**32 - 1, False), "value_size": (2**32 - 1, False),
    "map_id": (2**32 - 1, False), "map_flags": (2**32 - 1, False),
}
_STRS = ("map_name", "map_path", "map_type", "layout", "layout_reason", "method", "hostname", "ctscope_version")


def check_metadata(p: Path, meta: dict) -> None:
    """SnapshotError naming `p` unless every known field of `meta` has its type and range."""
    for k, (hi, required) in _INTS.items():
        v = meta.get(k)
        if v is None and not required:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
            raise SnapshotError(f"{p}: ctscope metadata {k} is {_shown(v)}; expected an integer from 0 to {hi}")
    for k in _STRS:
        if meta.get(k) is not None and not isinstance(meta[k], str):
            raise SnapshotError(f"{p}: ctscope metadata {k} is {_shown(meta[k])}; expected a string")
    s = meta.get("nf_conntrack_sysctls")
    if s is not None and not (isinstance(s, dict) and all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in s.values())):
        raise SnapshotError(f"{p}: ctscope metadata nf_conntrack_sysctls is not a mapping of integers")


def _shown(v: object) -> str:
    from ctscope.textsafe import printable

    text = json.dumps(v) if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__
    return printable(text[:60] + ("…" if len(text) > 60 else ""))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")
