"""Options and output shared by the analysis commands (stats, expired, top, query, diff,
metrics, report, snapshot)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Optional

import polars as pl
import typer

from ctscope import export
from ctscope.outfile import output_file
from ctscope.textsafe import json_controls, printable
from ctscope.errors import BadArgument
from ctscope.pins import DEFAULT_BPFFS

SOURCE_HELP = ("Live pin, snapshot file (.parquet/.arrow), or a directory or glob of snapshots "
               "(default: the newest cali_v4_ct* pin under BPFFS/tc/globals).")
FRAME_FORMATS = ("table", "json", "ndjson", "csv", "parquet", "arrow")

Source = typer.Argument(None, help=SOURCE_HELP, show_default=False)
Bpffs = typer.Option(DEFAULT_BPFFS, "--bpffs", help="bpffs mount to look for the default pin under.")
Ipv6 = typer.Option(False, "--ipv6", help="Default pin: the cali_v6_* map.")
Layout = typer.Option("auto", "--layout", help="Live pins: auto|v2|v3-created|v3|v4.")
NowNs = typer.Option(None, "--now-ns", min=0, max=2**64 - 1, help="Reference monotonic time (ns) for ages (default: the dump's own).")
Where = typer.Option(None, "--where", "-w", help="SQL predicate on the entries, e.g. \"proto = 6 AND dport = 443\".")
Timeouts = typer.Option(None, "--timeouts", help="Felix timeouts, bpfConntrackTimeouts syntax: \"TCPEstablished=2h,UDPTimeout=30s\".")
FelixConfig = typer.Option(None, "--felix-config", help="FelixConfiguration YAML/JSON file to take spec.bpfConntrackTimeouts from.")
Output = typer.Option(None, "-o", "--output", help="Write to FILE (atomically) instead of stdout.")


def source_kw(bpffs: str, ipv6: bool, layout: str, now_ns: Optional[int]) -> dict:
    from ctscope.cli.app import state

    return {"bpffs": bpffs, "ipv6": ipv6, "layout": layout, "now_ns": now_ns, "unverified": state["unverified"]}


def frame_format(fmt: Optional[str], output: Optional[str]) -> str:
    if fmt is None:
        fmt = export.format_from_path(output, None) if output else "table"
    if fmt not in FRAME_FORMATS:
        raise BadArgument(f"--format {fmt!r}: expected one of {', '.join(FRAME_FORMATS)}")
    return fmt


def emit_frame(df: pl.DataFrame, fmt: str, output: Optional[str], metadata: dict | None = None,
               header: str | None = None) -> None:
    """Write a result frame; binary formats carry `metadata` (a snapshot's) when given."""
    kv = {"ctscope": json.dumps(metadata)} if metadata else None
    if fmt in ("parquet", "arrow"):
        if output is None:
            target: IO[bytes] | Path = export.stdout_binary()
            _write_binary(df, fmt, target, kv)
        else:
            with output_file(output) as tmp:
                _write_binary(df, fmt, tmp, kv)
        return
    text = render_text(df, fmt, header)
    write_output(text, output)


def write_output(text: str, output: Optional[str], private: bool = True) -> None:
    """`private`: a new file is 0600 (connection data); False: 0644 & ~umask (metrics)."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with output_file(output, private=private) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _write_binary(df: pl.DataFrame, fmt: str, target, kv: dict | None) -> None:
    from ctscope import snapshot_file

    if fmt == "parquet":
        snapshot_file.write_parquet([df], df.schema, target, (lambda _rows: kv) if kv else None)
    else:
        snapshot_file.write_arrow([df], df.schema, target, (lambda _final: kv) if kv else None)


def render_text(df: pl.DataFrame, fmt: str, header: str | None = None) -> str:
    if fmt == "table":
        return (header + "\n" if header else "") + table(df)
    shown = df.with_columns(pl.col(pl.Binary).bin.encode("hex"))
    if fmt == "csv":
        # CSV has no lists: flag names joined with "|", as dump's CSV writes them
        return shown.with_columns(
            [pl.col(c).list.join("|") for c, t in shown.schema.items() if t == pl.List(pl.String)]).write_csv()
    if fmt == "ndjson":
        return json_controls(shown.write_ndjson())
    return json.dumps(shown.to_dicts(), indent=1, default=str) + "\n"


def table(df: pl.DataFrame) -> str:
    """Aligned plain text: numbers right-aligned, shares as percentages, nulls as '-'."""
    if df.height == 0:
        return "(no rows)\n"
    cols = df.columns
    cells: list[list[str]] = []
    for row in df.iter_rows():
        out = []
        for c, v in zip(cols, row):
            if v is None:
                out.append("-")
            elif isinstance(v, float):
                out.append(f"{v:.1%}" if c == "share" else f"{v:,.1f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}")
            elif isinstance(v, list):
                out.append(",".join(map(str, v)) or "-")
            elif isinstance(v, bool):
                out.append("yes" if v else "no")
            elif isinstance(v, int) and c.endswith(("bytes", "packets", "entries", "_delta", "_old", "_new")):
                out.append(f"{v:,}")
            else:
                out.append(str(v))
        cells.append(out)
    numeric = [df.schema[c].is_numeric() for c in cols]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    def line(vals, head=False):
        parts = [(v.rjust(w) if num and not head else v.ljust(w)) for v, w, num in zip(vals, widths, numeric)]
        return printable("  ".join(parts).rstrip())  # control characters from files shown escaped
    return "\n".join([line([c.upper() for c in cols], head=True), *(line(r) for r in cells)]) + "\n"
