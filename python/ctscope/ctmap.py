"""A pinned CT map opened from Python: parameters, dumps, polars frames.

The heavy lifting (syscalls, decoding) happens in `ctscope._native` with the GIL
released; this module only wires it to polars.
"""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike
from typing import TYPE_CHECKING

from ctscope._native import Dump, MapInfo, NativeMap

if TYPE_CHECKING:  # imported where used: `import ctscope` and `dump -o X.parquet` run without polars
    import polars as pl


class CtMap:
    """A pinned map, opened read-only (write commands open theirs through `_native.LiveMap`)."""

    def __init__(self, path: str | PathLike[str], layout: str = "auto"):
        self._native = NativeMap(str(path))
        self.layout = layout

    @property
    def info(self) -> MapInfo:
        """Live parameters as the kernel reports them, plus detected CT version/family."""
        return self._native.info

    @property
    def path(self) -> str:
        return self._native.info.path

    def dump(
        self,
        layout: str | None = None,
        method: str = "auto",
        batch_size: int | None = None,
        now_ns: int | None = None,
        limit: int | None = None,
        threads: int | None = None,
        columns: list[str] | None = None,
        predicate: tuple | None = None,
        gather_wait_ms: int | None = None,
    ) -> Dump:
        """Start reading the map. The result is an Arrow C stream (`pl.DataFrame(dump)`
        works) and also yields batches one by one with `iter_batches(dump)`.

        `threads`: bucket-range workers for the batch method (default: available cores;
        1 = one reader thread overlapped with decoding). `columns`: decode only these.
        `predicate`: a `ctscope.pushdown` IR; the rows it rejects are not decoded (it is a
        prefilter: apply the polars predicate it came from as well). `gather_wait_ms`: how
        long the rows a predicate keeps may wait to fill a batch (default 50 ms)."""
        return self._native.dump(layout or self.layout, method, batch_size, now_ns, limit, threads, columns, predicate,
                                 gather_wait_ms)

    def to_polars(
        self,
        layout: str | None = None,
        method: str = "auto",
        batch_size: int | None = None,
        now_ns: int | None = None,
        limit: int | None = None,
        threads: int | None = None,
        columns: list[str] | None = None,
    ) -> pl.DataFrame:
        """Every entry as a polars DataFrame (primitive columns imported without copying);
        `columns`: only these (the others are never decoded)."""
        return dump_to_polars(self.dump(layout, method, batch_size, now_ns, limit, threads, columns))

    def scan(self, layout: str | None = None, method: str = "auto", batch_size: int | None = None,
             now_ns: int | None = None, threads: int | None = None) -> pl.LazyFrame:
        """The map as a LazyFrame (see `scan_map`)."""
        return scan_map(self, layout=layout, method=method, batch_size=batch_size, now_ns=now_ns, threads=threads)

    def __repr__(self) -> str:
        return f"CtMap({self.path!r}, {self.info!r})"


def iter_batches(dump: Dump, rows: int | None = None) -> Iterator[pl.DataFrame]:
    """Decoded batches as polars frames, each batch its own frame, or with `rows`, frames
    of at least that many rows (a few batches imported at once: polars' and Python's
    per-frame costs are paid once for all of them); errors surface as ctscope exceptions."""
    import polars as pl

    while (b := dump.next_batch() if rows is None else dump.next_batches(rows)) is not None:
        yield pl.DataFrame(b)


# Rows a frame gathers when nobody reads frame by frame: whole frames (to_polars), or
# polars' scans, whose streaming engine still sees bounded pieces.
GATHER_ROWS = 1 << 18


def dump_to_polars(dump: Dump) -> pl.DataFrame:
    import polars as pl

    frames = list(iter_batches(dump, GATHER_ROWS))
    if not frames:
        # An empty map still has the full schema: read it from the (now empty) stream.
        return pl.DataFrame(dump)
    return pl.concat(frames, rechunk=False) if len(frames) > 1 else frames[0]


def scan_map(pin: str | PathLike[str] | CtMap, *, layout: str | None = None, method: str = "auto",
             batch_size: int | None = None, now_ns: int | None = None, threads: int | None = None) -> pl.LazyFrame:
    """A pinned map as a polars LazyFrame. Each `collect()` reads the map afresh, and reads
    only what the query needs: the columns it uses (others are never decoded), the rows its
    filter can rule out on the raw bytes (protocol, ports, addresses, type, flag bits,
    last_seen/idle; see `ctscope.pushdown`) are skipped before decoding, and a `head(n)`
    stops reading once n rows are out. The full filter is always applied by polars too, so
    results equal `pl.DataFrame(to_polars()).filter(...)` exactly.

        >>> ctscope.scan_map(pin).filter(pl.col("dport") == 443).select("src", "dst").collect()"""
    import polars as pl
    from polars.io.plugins import register_io_source

    from ctscope import pushdown

    m = pin if isinstance(pin, CtMap) else open_map(pin)
    lay = layout or m.layout
    # The schema up front (a dump of no rows: well under a millisecond). Given as a mapping,
    # not a callable: polars tests a callable against pyarrow.Schema, importing pyarrow
    # (~30 ms, a tenth of a 1M-entry scan) wherever it is installed.
    schema = pl.DataFrame(m.dump(layout=lay, method=method, limit=0)).schema
    raw = "key" in schema

    def source(with_columns, predicate, n_rows, batch_size_hint):  # noqa: ARG001 - we batch by syscall
        want = None if with_columns is None else list(with_columns)
        need = want
        if predicate is not None and want is not None:
            need = want + [c for c in predicate.meta.root_names() if c not in want]
        if need is not None and not need:
            need = [next(iter(schema))]  # a row count still needs rows: the cheapest column
        ir = None if raw or predicate is None else pushdown.translate(predicate)
        d = m.dump(layout=lay, method=method, batch_size=batch_size, now_ns=now_ns, threads=threads,
                   limit=n_rows if predicate is None else None,
                   columns=None if raw else need, predicate=ir)
        produced = 0
        for df in iter_batches(d, None if n_rows is not None else GATHER_ROWS):
            if predicate is not None:
                df = df.filter(predicate)
            if want is not None and (raw or want != need):
                df = df.select(want) if want else df.drop(df.columns)  # keeps the height
            if n_rows is not None and produced + df.height >= n_rows:
                yield df.head(n_rows - produced)
                return
            produced += df.height
            yield df

    return register_io_source(source, schema=schema, explain_name="ctscope", explain_detail=m.path)


def open_map(path: str | PathLike[str], layout: str = "auto") -> CtMap:
    """Open a pinned map read-only. Raises PinNotFound, NotACtMap or PermissionDenied."""
    return CtMap(path, layout=layout)
