"""A pinned CT map opened from Python: parameters, dumps, polars frames.

The heavy lifting (syscalls, decoding) happens in `ctscope._native` with the GIL
released; this module only wires it to polars.
"""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike

import polars as pl

from ctscope._native import Dump, MapInfo, NativeMap


class CtMap:
    """A pinned map, opened read-only unless `writable=True` (repair commands only)."""

    def __init__(self, path: str | PathLike[str], layout: str = "auto", writable: bool = False):
        self._native = NativeMap(str(path), writable)
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
    ) -> Dump:
        """Start reading the map. The result is an Arrow C stream (`pl.DataFrame(dump)`
        works) and also yields batches one by one with `iter_batches(dump)`.

        `threads`: bucket-range workers for the batch method (default: available cores;
        1 = one reader thread overlapped with decoding)."""
        return self._native.dump(layout or self.layout, method, batch_size, now_ns, limit, threads)

    def to_polars(
        self,
        layout: str | None = None,
        method: str = "auto",
        batch_size: int | None = None,
        now_ns: int | None = None,
        limit: int | None = None,
        threads: int | None = None,
    ) -> pl.DataFrame:
        """Every entry as a polars DataFrame (primitive columns imported without copying)."""
        return dump_to_polars(self.dump(layout, method, batch_size, now_ns, limit, threads))

    def __repr__(self) -> str:
        return f"CtMap({self.path!r}, {self.info!r})"


def iter_batches(dump: Dump) -> Iterator[pl.DataFrame]:
    """Decoded batches as polars frames; errors surface as ctscope exceptions."""
    while (b := dump.next_batch()) is not None:
        yield pl.DataFrame(b)


def dump_to_polars(dump: Dump) -> pl.DataFrame:
    frames = list(iter_batches(dump))
    if not frames:
        # An empty map still has the full schema: read it from the (now empty) stream.
        return pl.DataFrame(dump)
    return pl.concat(frames, rechunk=False) if len(frames) > 1 else frames[0]


def open_map(path: str | PathLike[str], layout: str = "auto") -> CtMap:
    """Open a pinned map read-only. Raises PinNotFound, NotACtMap or PermissionDenied."""
    return CtMap(path, layout=layout)
