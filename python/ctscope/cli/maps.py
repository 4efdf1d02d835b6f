"""`ctscope maps`: the pinned CT maps on this node with their live parameters."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ctscope.cli.app import app
from ctscope.ctmap import open_map
from ctscope.errors import CtscopeError
from ctscope.pins import DEFAULT_BPFFS, list_pins


def map_row(path) -> dict:
    """Parameters and fill of one pin; errors become a row with an `error` field."""
    try:
        m = open_map(path)
        info = m.info.as_dict()
        if m.info.map_type in ("hash", "lru_hash"):
            n = count_entries(m)
            info["entries"] = n
            info["fill"] = round(n / m.info.max_entries, 4) if m.info.max_entries else None
        return info
    except CtscopeError as e:
        return {"path": str(path), "error": str(e)}


def count_entries(m) -> int:
    from ctscope._native import raw_read

    n, _secs = raw_read(m.path, 16384, "auto")
    return n


@app.command("maps")
def maps_cmd(
    bpffs: str = typer.Option(DEFAULT_BPFFS, "--bpffs", help="bpffs mount to look under."),
    all_pins: bool = typer.Option(False, "--all", help="Every pinned object, not just Calico CT maps."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
) -> None:
    """List CT maps under BPFFS/tc/globals: version, family, type, sizes, fill."""
    rows = [map_row(p) for p in list_pins(bpffs, all_pins)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        Console(stderr=True).print(f"no CT maps under {bpffs}/tc/globals (use --bpffs or --all)")
        return
    t = Table(title=f"CT maps under {bpffs}")
    for col in ["path", "ver", "fam", "type", "key/value", "max_entries", "flags", "entries", "fill"]:
        t.add_column(col, justify="right" if col in ("max_entries", "entries", "fill") else "left")
    for r in rows:
        if "error" in r:
            t.add_row(r["path"], "", "", "", "", "", "", "", r["error"])
            continue
        fill = r.get("fill")
        t.add_row(r["path"], str(r["version"] or "-"), str(r["family"] or "-"), r["map_type"],
                  f"{r['key_size']}/{r['value_size']}", f"{r['max_entries']:,}", hex(r["map_flags"]),
                  f"{r['entries']:,}" if "entries" in r else "-",
                  f"{fill:.1%}" if fill is not None else "-")
    Console().print(t)
