"""`ctscope delete`: remove chosen entries (dry run by default; backup first)."""

from __future__ import annotations

from typing import List, Optional

import typer

from ctscope import act
from ctscope.cli import act_options as o
from ctscope.cli.app import app


@app.command()
def delete(
    pin: Optional[str] = o.Pin,
    where: Optional[str] = typer.Option(None, "--where", "-w", help="SQL predicate on dump's columns, e.g. \"proto = 17 AND dport = 53\"."),
    tuples: Optional[List[str]] = typer.Option(None, "--tuple", help="\"PROTO SRC[:PORT] DST[:PORT]\" (the `get` syntax); repeatable."),
    yes: bool = o.Yes,
    max_delete: Optional[int] = o.Max,
    force: bool = o.Force,
    backup_dir: Optional[str] = o.BackupDir,
    wait: float = o.Wait,
    bpffs: str = o.Bpffs,
    ipv6: bool = o.Ipv6,
    layout: str = o.Layout,
    as_json: bool = o.Json,
) -> None:
    """Delete the entries --where or --tuple selects, and the other side of each NAT pair."""
    say = (lambda s: None) if as_json else print
    res = act.delete(pin, where=where, tuples=tuples, yes=yes, max_delete=max_delete, force=force,
                     backup_directory=backup_dir, wait=wait, bpffs=bpffs, ipv6=ipv6, layout=layout, say=say)
    o.emit(res, as_json)
