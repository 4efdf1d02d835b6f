"""Writing dumps: text formats stream batch by batch, parquet and Arrow IPC through
ctscope.snapshot_file (the Rust core's writers), so memory stays bounded whatever the map
size. Output files go through ctscope.outfile (temporary name, then
rename; links and modes checked)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ctscope.errors import BadArgument, polars_gist
from ctscope.textsafe import UNSAFE_PATTERN, json_controls, printable

if TYPE_CHECKING:  # imported where used: `dump -o X.parquet` runs without polars
    import polars as pl

    from ctscope._native import Dump

TEXT_FORMATS = ("table", "json", "ndjson", "csv")
BINARY_FORMATS = ("parquet", "arrow")
FORMATS = TEXT_FORMATS + BINARY_FORMATS

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
    import polars as pl

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
    import polars as pl

    # Raw-layout bytes as hex in every text format; CSV also has no lists.
    df = df.with_columns(pl.col(pl.Binary).bin.encode("hex"))
    if fmt == "csv" and "flag_names" in df.columns:
        df = df.with_columns(pl.col("flag_names").list.join("|"))
    return df


TABLE_SLICE = 65536


def _table_text(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    """`cols` of `df` as the table shows them (idle_s to 0.1 s, lists comma-joined, bytes hex, nulls '-')."""
    import polars as pl

    return df.select(cols).with_columns(
        [pl.col(c).list.join(",") for c in cols if df.schema[c] == pl.List(pl.String)]
        + [pl.col(c).round(1) for c in cols if df.schema[c] == pl.Float64]
        + [pl.col(pl.Binary).bin.encode("hex")]
    ).cast(pl.String).fill_null("-")


def _table_lines(text_df: pl.DataFrame, widths: dict[str, int]) -> str:
    """The table's rows, built by polars a frame at a time (per-row Python formatting was
    most of `expired`'s time on a million entries). Control characters from the map or a
    file are shown escaped (textsafe.printable, applied to the few cells that have any)."""
    import polars as pl

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
    import polars as pl

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


def write_binary(source: Dump | Iterator[pl.DataFrame], schema: pl.Schema | None, fmt: str,
                 target: str | os.PathLike[str] | IO[bytes], metadata: Callable[[int], dict[str, str]] | None = None,
                 on_rows: Callable[[int], None] | None = None) -> int:
    """Write frames (or, for parquet, a whole Dump: its batches go from the decoder to the
    file without polars) as one parquet or Arrow IPC file (ctscope.snapshot_file, the Rust
    core's writers); bounded memory. `metadata(rows)`: the file's key/value metadata for
    `rows` rows; `on_rows(n)`: told as a Dump's rows are written (frames report their own,
    see `filtered`)."""
    from ctscope import snapshot_file
    from ctscope._native import Dump

    if fmt == "parquet":
        return snapshot_file.write_parquet(source, schema, target, metadata, on_rows)
    if isinstance(source, Dump) or schema is None:
        raise TypeError("write_binary: Arrow IPC is written from frames and their schema")
    count = [0]

    def counted(frames: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
        for df in frames:
            count[0] += df.height
            yield df

    # The schema is written before the entry count is known, so it says null there;
    # the footer has the final figures.
    def ipc_meta(final: bool) -> dict[str, str]:
        if not metadata:
            return {}
        return metadata(count[0]) if final else snapshot_file.provisional(metadata(count[0]))

    return snapshot_file.write_arrow(counted(source), schema, target, ipc_meta)


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
