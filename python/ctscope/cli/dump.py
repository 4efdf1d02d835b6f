"""`ctscope dump`: every entry of a CT map, decoded, filtered and written in a format."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ctscope import export, snapshot_file
from ctscope.outfile import output_file
from ctscope._native import Dump, realtime_ns
from ctscope.cli.app import app
from ctscope.ctmap import open_map
from ctscope.errors import BadArgument
from ctscope.pins import DEFAULT_BPFFS, default_ct_pin

if TYPE_CHECKING:
    import polars as pl


def resolve_pin(pin: Optional[str], bpffs: str, ipv6: bool) -> Path:
    return Path(pin) if pin else default_ct_pin(bpffs, ipv6)


@app.command()
def dump(
    pin: Optional[str] = typer.Argument(None, help="Pinned map (default: newest cali_v4_ct* under BPFFS/tc/globals)."),
    bpffs: str = typer.Option(DEFAULT_BPFFS, "--bpffs", help="bpffs mount to look under."),
    ipv6: bool = typer.Option(False, "--ipv6", help="Pick the cali_v6_* map."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table|json|ndjson|csv|parquet|arrow (default: from -o suffix, else table)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Write to FILE (atomically: temp name, then rename)."),
    layout: str = typer.Option("auto", "--layout", help="auto|v2|v3-created|v3|v4|raw"),
    method: str = typer.Option("auto", "--method", help="auto|batch|next_key"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, max=2**32 - 1, help="Entries per batch syscall."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0, max=2**63 - 1, help="Stop after N entries (after --where)."),
    where: Optional[str] = typer.Option(None, "--where", "-w", help="SQL predicate, e.g. \"proto = 6 AND dport = 443\"."),
    now_ns: Optional[int] = typer.Option(None, "--now-ns", min=0, max=2**64 - 1, help="Monotonic reference time for idle_s (default: now)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=256, help="Bucket-range workers (default: cores; 1 = single reader)."),
) -> None:
    """Dump a CT map (read-only)."""
    fmt = export.format_from_path(output, fmt)
    m = open_map(resolve_pin(pin, bpffs, ipv6), layout=layout)
    # A parquet dump without --where goes from the decoder to the file as record batches:
    # polars is not even imported (a fifth of a 1M-entry dump's time was its import).
    direct = fmt == "parquet" and not where
    schema = expr = ir = None
    if not direct:
        import polars as pl

        from ctscope import pushdown

        schema = pl.DataFrame(m.dump(limit=0)).schema
        if where and "expire" in where.lower() and not {"expired", "expire_reason"} & set(schema.names()):
            # Felix's verdict judges a NAT fwd entry by its rev entry: it needs the whole map,
            # which `expired` builds; dump streams batches and has only the dumped columns.
            raise BadArgument(f"--where {where!r}: dump has only the dumped columns, not Felix's expired/expire_reason; "
                              "use `ctscope expired [--all] --where ...` (same formats and -o)")
        expr = export.parse_where(where, schema)
        # --where is judged on the raw bytes first where it can be (ctscope.pushdown): rows it
        # rules out are never decoded; `filtered` applies the whole predicate to what is left.
        ir = pushdown.translate(expr) if "key" not in schema else None
    if direct and threads is None:
        threads = snapshot_file.PARQUET_READ_THREADS
    d = m.dump(method=method, batch_size=batch_size, now_ns=now_ns, limit=None if where else limit, threads=threads,
               predicate=ir)
    # A progress line only where it does not mix with the rows: stderr is a terminal and
    # the rows go to a file or a pipe.
    show = sys.stderr.isatty() and (output is not None or not sys.stdout.isatty())
    with _progress(m.info.max_entries, show) as on_rows:
        if direct:
            rows = _write(d, d, m.info, fmt, output, None, on_rows)
        else:
            from ctscope.ctmap import iter_batches

            rows = _write(export.filtered(iter_batches(d), expr, limit, on_rows), d, m.info, fmt, output, schema)
    if output:
        print(f"ctscope: wrote {rows} entries ({d.layout}, via {d.method}) to {output}", file=sys.stderr)
    walk = export.walk_record(d, m.info, realtime_ns())
    if walk["changed"]:
        print(f"ctscope: note: {export.walk_text(walk, m.info.max_entries)}", file=sys.stderr)


def _write(source: "Dump | Iterator[pl.DataFrame]", d: "Dump", info, fmt: str, output: Optional[str],
           schema: "pl.Schema | None", on_rows: Optional[Callable[[int], None]] = None) -> int:
    """Write `source`, the Dump `d` itself (parquet only) or its frames, in `fmt`; returns rows."""
    if fmt in export.BINARY_FORMATS:
        meta = lambda n: snapshot_file.build_metadata(d, info, n, realtime_ns())  # noqa: E731
        if output:
            with output_file(output) as tmp:
                return export.write_binary(source, schema, fmt, tmp, meta, on_rows)
        return export.write_binary(source, schema, fmt, export.stdout_binary(), meta, on_rows)
    assert not isinstance(source, Dump), "text formats are written from frames"
    if output:
        with output_file(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            return export.write_text(source, fmt, f, schema)
    return export.write_text(source, fmt, sys.stdout, schema)


class _progress:
    """A rich progress line on stderr when `show`; a no-op otherwise."""

    def __init__(self, max_entries: int, show: bool):
        self.max_entries = max_entries
        self.show = show
        self.progress = None

    def __enter__(self):
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("dumping"), BarColumn(), TextColumn("{task.completed:,} entries"),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                                 # rich would otherwise capture stdout, where the rows go, into the display
                                 redirect_stdout=False, redirect_stderr=False)
        self.progress.start()
        task = self.progress.add_task("dump", total=self.max_entries)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()
        return False
