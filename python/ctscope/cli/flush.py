"""`ctscope flush`: delete every entry (backup first; --yes)."""

from __future__ import annotations

from typing import Optional

from ctscope import act
from ctscope.cli import act_options as o
from ctscope.cli.app import app


@app.command()
def flush(
    pin: Optional[str] = o.Pin,
    yes: bool = o.Yes,
    backup_dir: Optional[str] = o.BackupDir,
    wait: float = o.Wait,
    bpffs: str = o.Bpffs,
    ipv6: bool = o.Ipv6,
    as_json: bool = o.Json,
) -> None:
    """Delete every entry (conntrack -F). The backup keeps them; `ctscope restore` puts them back."""
    say = (lambda s: None) if as_json else print
    res = act.flush(pin, yes=yes, backup_directory=backup_dir, wait=wait, bpffs=bpffs, ipv6=ipv6, say=say)
    o.emit(res, as_json)
