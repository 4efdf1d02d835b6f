"""Writing dumps: text formats stream batch by batch, parquet through a polars sink and
Arrow IPC through ctscope.snapshot_file (the Rust core's writer), so memory stays bounded
whatever the map size. Output files go through ctscope.outfile (temporary name, then
rename; links and modes checked)."""

from __future__ import annotations

import os
import sys
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import polars as pl

from ctscope.errors import BadArgument, polars_gist
from ctscope.textsafe import UNSAFE_PATTERN, json_controls, printable

TEXT_FORMATS = ("table", "json", "ndjson", "csv")
BINARY_FORMATS = ("parquet", "arrow")
FORMATS = TEXT_FORMATS + BINARY_FORMATS
# zstd at level 1, not polars' default 3: the same file size on CT dumps (50 MiB for 1M
# node-profile entries) for ~0.1 s less CPU per million entries (0.76 vs 0.87 s to encode).
PARQUET_ZSTD_LEVEL = 1

# The compact view `table` shows (everything is in the other formats).
TABLE_COLUMNS = ["proto", "src", "sport", "dst", "dport", "type", "tcp_state", "idle_s", "flag_names",
                 "a2b_packets", "b2a_packets", "a2b_bytes", "b2a_bytes", "orig_ip", "orig_port"]


def format_from_path(path: str | None, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise BadArgument(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
        return fmt
    if path:
        suffix = Path(path).suffix.lower()
        from ctscope.snapshot_file import SUFFIX_KINDS

        known = {**SUFFIX_KINDS, ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson", ".csv": "csv",
                 ".txt": "table", ".table": "table"}
        if suffix and suffix not in known and not Path(path).name.startswith("."):
            # `-o x.xlsx` must not silently get a text table under a spreadsheet's name.
            raise BadArgument(f"{path}: unknown output suffix {suffix!r}; give --format "
                              f"({', '.join(FORMATS)}) or use one of {', '.join(known)}")
        return known.get(suffix, "table")
    return "table"


def parse_where(where: str | None, schema: pl.Schema) -> pl.Expr | None:
    """A SQL predicate (`proto = 6 AND dport = 443`) as a polars expression, checked
    against the schema up front so a typo fails before the map is read."""
    if not where:
        return None
    try:
        from ctscope.pushdown import expand_networks

        expr = pl.sql_expr(expand_networks(where))
        pl.DataFrame(schema=schema).filter(expr)
    except Exception as e:  # polars raises several types for bad SQL
        raise BadArgument(f"--where {where!r}: {polars_gist(e)}") from None
    return expr


def filtered(frames: Iterator[pl.DataFrame], where: pl.Expr | None, limit: int | None,
             on_rows: Callable[[int], None] | None = None) -> Iterator[pl.DataFrame]:
    """Apply --where and --limit to a stream of frames."""
    n = 0
    for df in frames:
        if on_rows:
            on_rows(df.height)
        if where is not None:
            df = df.filter(where)
        if limit is not None and n + df.height >= limit:
            yield df.head(limit - n)
            return
        n += df.height
        yield df


def _text_frame(df: pl.DataFrame, fmt: str) -> pl.DataFrame:
    # Raw-layout bytes as hex in every text format; CSV also has no lists.
    df = df.with_columns(pl.col(pl.Binary).bin.encode("hex"))
    if fmt == "csv" and "flag_names" in df.columns:
        df = df.with_columns(pl.col("flag_names").list.join("|"))
    return df


TABLE_SLICE = 65536


def _table_text(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    """`cols` of `df` as the table shows them (idle_s to 0.1 s, lists comma-joined, bytes hex, nulls '-')."""
    return df.select(cols).with_columns(
        [pl.col(c).list.join(",") for c in cols if df.schema[c] == pl.List(pl.String)]
        + [pl.col(c).round(1) for c in cols if df.schema[c] == pl.Float64]
        + [pl.col(pl.Binary).bin.encode("hex")]
    ).cast(pl.String).fill_null("-")


def _table_lines(text_df: pl.DataFrame, widths: dict[str, int]) -> str:
    """The table's rows, built by polars a frame at a time (per-row Python formatting was
    most of `expired`'s time on a million entries). Control characters from the map or a
    file are shown escaped (textsafe.printable, applied to the few cells that have any)."""
    unsafe = [c for c in text_df.columns if text_df[c].str.contains(UNSAFE_PATTERN).any()]
    if unsafe:
        text_df = text_df.with_columns(pl.col(c).map_elements(printable, return_dtype=pl.String) for c in unsafe)
    lines = text_df.select(
        pl.concat_str([pl.col(c).str.pad_end(widths[c]) for c in text_df.columns], separator="  ")
        .str.strip_chars_end(" ")
    ).to_series()
    return "\n".join(lines.to_list()) + "\n" if len(lines) else ""


def write_text(frames: Iterator[pl.DataFrame], fmt: str, out: IO[str], schema: pl.Schema | None = None,
               columns: list[str] | None = None) -> int:
    """Stream frames as table/json/ndjson/csv; returns rows written. `schema`: what an empty
    CSV's header names when no frame arrives; `columns`: the table's columns (default: dump's
    compact view). Every command's table formats values alike (`idle_s` to 0.1 s)."""
    rows = 0
    first = True
    if fmt == "json":
        out.write("[")
    widths: dict[str, int] | None = None
    for df in frames:
        if fmt == "table" and df.height == 0:
            continue  # the header comes with the first rows; no rows at all: "(no entries)"
        if fmt == "table":
            cols = [c for c in (columns or TABLE_COLUMNS) if c in df.columns] or df.columns
            if widths is None:  # from the first frame, a column at a time (its text is large)
                widths = {c: max(len(c), 5) for c in cols}
                for c in cols:
                    widths[c] = max(widths[c], int(_table_text(df, [c])[c].str.len_chars().max() or 0))
                out.write(printable("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip()) + "\n")
            for off in range(0, df.height, TABLE_SLICE):  # the text of a slice at a time
                out.write(_table_lines(_table_text(df.slice(off, TABLE_SLICE), cols), widths))
        elif fmt == "ndjson":
            if df.height:
                out.write(json_controls(_text_frame(df, fmt).write_ndjson()))
        elif fmt == "json":
            if df.height:
                lines = json_controls(_text_frame(df, fmt).write_ndjson()).rstrip("\n").replace("\n", ",\n")
                out.write(("\n" if first else ",\n") + lines)
                first = False
        elif fmt == "csv":
            out.write(_text_frame(df, fmt).write_csv(include_header=rows == 0 and first))
            first = False
        rows += df.height
    if fmt == "csv" and first and schema is not None:
        out.write(_text_frame(pl.DataFrame(schema=schema), fmt).write_csv(include_header=True))
    if fmt == "json":
        out.write("\n]\n" if not first else "]\n")
    if fmt == "table" and widths is None:
        out.write("(no entries)\n")
    return rows


def write_binary(frames: Iterator[pl.DataFrame], schema: pl.Schema, fmt: str, target: str | os.PathLike[str] | IO[bytes],
                 metadata: Callable[[int], dict[str, str]] | None = None) -> int:
    """Stream frames into parquet (a polars sink) or Arrow IPC (ctscope.snapshot_file);
    bounded memory. `metadata(rows)`: the file's key/value metadata for `rows` rows."""
    from polars.io.plugins import register_io_source

    count = [0]

    def source(with_columns, predicate, n_rows, batch_size):  # noqa: ARG001 - no pushdown
        for df in frames:
            if stop.is_set():
                raise KeyboardInterrupt
            count[0] += df.height
            yield df

    stop = threading.Event()
    if fmt == "parquet":
        lf = register_io_source(source, schema=schema)
        kv = (lambda _ctx: metadata(count[0])) if metadata else None
        if isinstance(target, os.PathLike):
            target = os.fspath(target)
        with _sigint_stops(stop):
            try:
                lf.sink_parquet(target, metadata=kv, row_group_size=262_144, compression="zstd", compression_level=PARQUET_ZSTD_LEVEL)
            except Exception:
                if stop.is_set():
                    raise KeyboardInterrupt from None
                raise
        if stop.is_set():
            raise KeyboardInterrupt
    else:
        # The schema is written before the entry count is known, so it says null there;
        # the footer has the final figures.
        from ctscope import snapshot_file

        def ipc_meta(final: bool) -> dict[str, str]:
            if not metadata:
                return {}
            return metadata(count[0]) if final else snapshot_file.provisional(metadata(count[0]))

        snapshot_file.write_arrow(source(None, None, None, None), schema, target, ipc_meta)
    return count[0]


@contextmanager
def _sigint_stops(stop: threading.Event):
    """While polars' sink runs our source on its own threads, turn Ctrl-C into a request
    the source honours at the next batch. A KeyboardInterrupt raised in the main thread
    instead would let Python shut down under polars' threads, and a thread that then
    asks for the GIL is killed with pthread_exit, which aborts the process (SIGABRT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _sig, _frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def walk_record(dump, info, end_wall_ns: int) -> dict:
    """How the map was read, and whether it changed while it was: no dump is atomic. A walk
    that read more rows than max_entries, restarted (its cursor key was deleted) or was
    handed keys deleted before their value was read saw a changing map: its rows are keys
    seen during the walk, not one state of the map."""
    st = dump.stats
    rows = int(st.get("entries", 0))
    restarts, vanished = int(st.get("restarts", 0)), int(st.get("vanished", 0))
    return {
        "method": dump.method,
        "rows_read": rows,
        "rows_above_max_entries": max(rows - info.max_entries, 0),
        "restarts": restarts,
        "vanished": vanished,
        "duplicates_dropped": int(st.get("duplicates_dropped", 0)),
        "visits": int(st.get("visits", 0)),  # keys the per-key walk visited (0 for batch reads)
        "seconds": round((end_wall_ns - dump.wall_ns) / 1e9, 3),
        "finished": bool(dump.finished),
        "changed": rows > info.max_entries or restarts > 0 or vanished > 0,
    }


def walk_changed(walk) -> bool:
    return isinstance(walk, dict) and bool(walk.get("changed"))


def walk_text(walk: dict, max_entries) -> str:
    """What a snapshot's metadata says about a dump the map changed under."""
    rows = walk.get("rows_read")
    parts = [f"{rows:,} rows read" if isinstance(rows, int) else None]
    if isinstance(rows, int) and isinstance(max_entries, int) and rows > max_entries > 0:
        parts[0] += f", {rows - max_entries:,} more than max_entries"
    for k in ("restarts", "vanished"):
        if isinstance(walk.get(k), int) and walk[k]:
            parts.append(f"{walk[k]:,} {k}")
    if isinstance(walk.get("seconds"), (int, float)):
        parts.append(f"in {walk['seconds']:.1f} s")
    return ("the map changed during the dump (" + ", ".join(p for p in parts if p)
            + "): the rows are keys seen during the walk, not one state of the map")


def stdout_binary() -> IO[bytes]:
    if sys.stdout.isatty():
        raise BadArgument("binary formats (parquet, arrow) need -o FILE or a redirected stdout")
    return sys.stdout.buffer
