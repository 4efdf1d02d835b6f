"""Snapshots of a live map written for later and fleet-wide analysis.

`write_snapshot(pin, directory=DIR)` writes one file per dump under a hive-partitioned
layout that polars, DuckDB and Spark all read as a dataset with `node` and `date` columns:

    DIR/node=<node>/date=<YYYY-MM-DD>/<HHMMSS.mmm>Z-<map name>.parquet

The node is --node, else NODE_NAME (a Kubernetes downward-API variable), else the host name
(snapshot_file.node_name); date and time
are the dump's start in UTC. Files appear atomically (temporary dot-file, then rename), so a
reader never sees a partial snapshot.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ctscope import export, outfile, snapshot_file
from ctscope.errors import BadArgument

if TYPE_CHECKING:
    import polars as pl

    from ctscope._native import Dump

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def partition_path(directory: str | os.PathLike[str], node: str, wall_ns: int, map_name: str, fmt: str) -> Path:
    """Where a dump started at `wall_ns` (Unix ns) of `map_name` on `node` goes."""
    t = dt.datetime.fromtimestamp(wall_ns / 1e9, dt.timezone.utc)
    safe_node = _UNSAFE.sub("_", node) or "unknown"
    suffix = snapshot_file.SUFFIX[fmt]
    name = f"{t:%H%M%S}.{t.microsecond // 1000:03d}Z-{_UNSAFE.sub('_', map_name) or 'map'}{suffix}"
    return Path(directory) / f"node={safe_node}" / f"date={t:%Y-%m-%d}" / name


def _same_map_snapshot(map_name: str, fmt: str):
    """Whether a file name is one partition_path gives a snapshot of `map_name` in `fmt`."""
    pattern = re.compile(r"\d{6}\.\d{3}Z-" + re.escape(_UNSAFE.sub("_", map_name) or "map")
                         + re.escape(snapshot_file.SUFFIX[fmt]))
    return lambda name: pattern.fullmatch(name) is not None


def write_snapshot(pin: str | os.PathLike[str] | None = None, *, directory: str | os.PathLike[str] | None = None,
                   output: str | os.PathLike[str] | None = None, fmt: str | None = None, node: str | None = None,
                   bpffs: str | None = None, ipv6: bool = False, layout: str = "auto", now_ns: int | None = None,
                   where: str | None = None) -> tuple[Path, int]:
    """Dump `pin` (default: the live default pin) to a snapshot file: `output`, or a
    partitioned path under `directory`. Returns (path, entries written)."""
    from ctscope._native import realtime_ns
    from ctscope.ctmap import iter_batches, open_map
    from ctscope.pins import DEFAULT_BPFFS, default_ct_pin

    if fmt is None:  # -o X.arrow means Arrow IPC, as for `dump -o`
        inferred = export.format_from_path(os.fspath(output), None) if output is not None else "parquet"
        fmt = inferred if inferred in export.BINARY_FORMATS else "parquet"
    if fmt not in export.BINARY_FORMATS:
        raise BadArgument(f"--format {fmt!r}: snapshots are parquet or arrow")
    if (directory is None) == (output is None):
        raise BadArgument("give exactly one of --dir DIR (partitioned) or -o FILE")
    m = open_map(pin if pin is not None else default_ct_pin(bpffs or DEFAULT_BPFFS, ipv6), layout=layout)
    direct = fmt == "parquet" and not where  # the dump's batches straight into the file
    d = m.dump(now_ns=now_ns, threads=snapshot_file.PARQUET_READ_THREADS if direct else None)
    target = Path(output) if output is not None else partition_path(directory, snapshot_file.node_name(node),
                                                                     d.wall_ns, m.info.name, fmt)

    def metadata(n: int) -> dict[str, str]:
        return snapshot_file.build_metadata(d, m.info, n, realtime_ns(), node)

    source: Dump | Iterator[pl.DataFrame] = d
    schema = None
    if not direct:
        import polars as pl

        schema = pl.DataFrame(m.dump(layout=d.layout, limit=0)).schema
        expr = export.parse_where(where, schema)  # a bad --where fails before anything is made
        source = export.filtered(iter_batches(d), expr, None)
    outfile.make_dirs(target.parent)  # missing directories are made 0700
    # No later run writes this name again: a killed run's temporary of an earlier snapshot of
    # this map in this partition is removed by this one (outfile's rules for stale ones).
    stale = None if output is not None else _same_map_snapshot(m.info.name, fmt)
    with outfile.output_file(target, stale_names=stale) as tmp:
        rows = export.write_binary(source, schema, fmt, tmp, metadata)
    return target, rows
