"""`ctscope maps`: the pinned CT maps on this node with their live parameters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ctscope import fill
from ctscope._native import on_bpffs
from ctscope.cli.app import app
from ctscope.ctmap import open_map
from ctscope.errors import CtscopeError, NotACtMap, PinNotFound, exit_code
from ctscope.pins import DEFAULT_BPFFS, list_pins
from ctscope.textsafe import printable


def map_row(path) -> dict:
    """Parameters and fill of one pin; errors become a row with an `error` field."""
    return _map_row(path)[0]


def _map_row(path) -> tuple[dict, CtscopeError | None]:
    try:
        m = open_map(path)
        info = m.info.as_dict()
        if m.info.map_type in ("hash", "lru_hash"):
            n = count_entries(m)
            f = fill.judge(n, m.info.max_entries)
            info["entries"] = n
            info["fill"] = round(f.ratio, 4) if f.ratio is not None else None
            info["fill_now"] = f.verdict
            info["fill_seen_over_max"] = f.seen_over
        return info, None
    except CtscopeError as e:
        return {"path": str(path), "error": str(e)}, e


def count_entries(m) -> int:
    from ctscope._native import raw_read

    n, _secs = raw_read(m.path, 16384, "auto")
    return n


def check_bpffs(bpffs: str) -> None:
    """The --bpffs directory must exist and be on a bpffs (never walk another filesystem)."""
    root = Path(bpffs)
    if not root.exists():
        raise PinNotFound(f"--bpffs {bpffs}: no such directory; expected a bpffs mount such as {DEFAULT_BPFFS}")
    if not root.is_dir():
        raise NotACtMap(f"--bpffs {bpffs}: not a directory; expected a bpffs mount such as {DEFAULT_BPFFS}")
    if not on_bpffs(str(root)):
        raise NotACtMap(f"--bpffs {bpffs}: not a BPF filesystem (bpffs); expected a bpffs mount such as "
                        f"{DEFAULT_BPFFS} (mount -t bpf bpf {bpffs})")


@app.command("maps")
def maps_cmd(
    bpffs: str = typer.Option(DEFAULT_BPFFS, "--bpffs", help="bpffs mount to look under."),
    all_pins: bool = typer.Option(False, "--all", help="Every pinned object, not just Calico CT maps."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
) -> None:
    """List CT maps under BPFFS/tc/globals: version, family, type, sizes, fill."""
    check_bpffs(bpffs)
    results = [_map_row(p) for p in list_pins(bpffs, all_pins)]
    rows = [r for r, _ in results]
    errors = [e for _, e in results if e is not None]
    # Nothing could be read (not found, permission, ...): exit with that error's code, as `check` does.
    failed = exit_code(errors[0]) if errors and len(errors) == len(results) else 0
    if as_json:
        print(json.dumps(rows, indent=2))
        raise typer.Exit(failed)
    if not rows:
        Console(stderr=True).print(f"no CT maps under {bpffs}/tc/globals (use --bpffs or --all)")
        return
    if failed:
        for r in rows:
            print(f"ctscope: error: {printable(' '.join(r['error'].split()))}", file=sys.stderr)
        raise typer.Exit(failed)
    t = Table(title=f"{'pinned objects' if all_pins else 'CT maps'} under {bpffs}")
    for col in ["path", "ver", "fam", "type", "key/value", "max_entries", "flags", "entries", "fill"]:
        t.add_column(col, justify="right" if col in ("max_entries", "entries", "fill") else "left")
    for r in rows:
        if "error" in r:
            t.add_row(*map(_cell, (r["path"], "", "", "", "", "", "", "", r["error"])))
            continue
        t.add_row(*map(_cell, (r["path"], str(r["version"] or "-"), str(r["family"] or "-"), r["map_type"],
                  f"{r['key_size']}/{r['value_size']}", f"{r['max_entries']:,}", hex(r["map_flags"]),
                  f"{r['entries']:,}" if "entries" in r else "-", _fill_cell(r))))
    # Piped output is for scripts and logs: never cut paths to 80 columns (as `check` does).
    con = Console(width=None if sys.stdout.isatty() else 1000)
    con.print(t)
    for r in rows:
        if "entries" in r and (w := fill.judge(r["entries"], r["max_entries"]).warning()):
            con.print(printable(f"WARNING: {r['path']}: {w}"), highlight=False, markup=False)


def _fill_cell(r: dict) -> str:
    """`40.2%`, `97.7% HIGH`, `100.0% FULL`, `≥100% FULL` (more entries counted than the map holds:
    it changed while it was counted)."""
    if "entries" not in r or r.get("fill") is None:
        return "-"
    f = fill.judge(r["entries"], r["max_entries"])
    return f.text() + (f" {f.verdict.upper()}" if f.verdict in ("high", "full") else "")


def _cell(v: object) -> Text:
    """Names from the bpffs and the kernel: never rich markup, control characters escaped."""
    return Text(printable(v))
