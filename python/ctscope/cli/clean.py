"""`ctscope clean`: delete what Felix would expire, race-safely (dry run by default)."""

from __future__ import annotations

from typing import Optional

from ctscope import act
from ctscope.cli import act_options as o
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app


@app.command()
def clean(
    pin: Optional[str] = o.Pin,
    timeouts: Optional[str] = io.Timeouts,
    felix_config: Optional[str] = io.FelixConfig,
    where: Optional[str] = io.Where,
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
    """Delete the entries `ctscope expired` lists, as Felix's cleaner does: an entry goes only
    if its last_seen is unchanged since the scan; NAT pairs together."""
    say = (lambda s: None) if as_json else print
    res = act.clean(pin, timeouts=timeouts, felix_config=felix_config, where=where, yes=yes, max_delete=max_delete,
                    force=force, backup_directory=backup_dir, wait=wait, bpffs=bpffs, ipv6=ipv6, layout=layout, say=say)
    o.emit(res, as_json)
