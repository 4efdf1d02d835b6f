"""`ctscope resize` and `ctscope restore`: the write commands. Neither acts without --yes."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Optional

import typer

from ctscope.repair.common import Result, canonical_pin, old_pin
from ctscope.repair.delta import finish_delta
from ctscope.repair.recover import needs_recovery, recover_locked, recovery_plan
from ctscope.repair.resize import resize
from ctscope.repair.restore import restore
from ctscope.cli.app import app
from ctscope.errors import BadArgument


@app.command("resize")
def resize_cmd(
    pin: str = typer.Argument(..., help="Pinned CT map to resize (on a bpffs)."),
    max_entries: Optional[int] = typer.Option(None, "--max-entries", help="New max_entries."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and do nothing (also the default without --yes)."),
    backup: Optional[str] = typer.Option(None, "--backup", help="Backup file (default ./ctscope-backup-<map>-<time>.arrow); with --delta: the first copy's backup."),
    keep_old: bool = typer.Option(False, "--keep-old", help="Keep <pin>_old (the old map) for a later --delta."),
    delta: bool = typer.Option(False, "--delta", help="Copy into <pin> the entries of <pin>_old it lacks or holds with an older last_seen (with --backup: those changed since the first copy), then drop <pin>_old."),
    force: bool = typer.Option(False, "--force", help="Shrink below the entry count: keep the newest entries by last_seen; when recovering, put <pin>_old back even if entries of <pin> do not fit it."),
    recover: bool = typer.Option(False, "--recover", help="Only recover an interrupted migration (Felix's rule: <pin>_old back to <pin>, after carrying into it the newer entries of <pin>)."),
    yes: bool = typer.Option(False, "--yes", help="Act. Without it the plan is printed and nothing changes."),
    wait: float = typer.Option(0.0, "--wait", metavar="SECONDS", help="When another ctscope write command holds the pin's lock, wait up to SECONDS for it (default 0: refuse at once, exit 5)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Resize a pinned CT map: backup, copy into a new map, verify, swap pins atomically."""
    act = yes and not dry_run
    say = (lambda s: None) if as_json else _say
    if recover:
        p = canonical_pin(pin)
        if not needs_recovery(p):
            say(f"{p}: no interrupted migration ({old_pin(p).name} absent): nothing to recover")
            res = Result(pin=str(p), done=True)
        elif not act:
            say(f"plan (nothing done; add --yes): {recovery_plan(p)}")
            res = Result(pin=str(p))
        else:
            done = recover_locked(p, say, force=force, wait=wait)
            if done is None:
                say(f"{p}: no interrupted migration any more (another run finished it): nothing to recover")
            res = Result(pin=str(p), done=True, recovered=done or [])
    elif delta:
        res = finish_delta(pin, backup=backup, keep_old=keep_old, yes=act, wait=wait, say=say)
    else:
        if max_entries is None:
            raise BadArgument("resize needs --max-entries N (or --delta / --recover)")
        res = resize(pin, max_entries, backup=backup, keep_old=keep_old, force=force, yes=act, wait=wait, say=say)
    if as_json:
        print(json.dumps(asdict(res), indent=2))


@app.command("restore")
def restore_cmd(
    pin: str = typer.Argument(..., help="Pinned map to write into (same key/value sizes as the backup)."),
    source: str = typer.Option(..., "--from", help="Backup file written by resize, delete, clean or flush."),
    yes: bool = typer.Option(False, "--yes", help="Act. Without it the plan is printed and nothing changes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace entries the map holds even when they are newer (last_seen) than the backup's."),
    force: bool = typer.Option(False, "--force", help="Write into a map of another CT version/layout or type, or a non-CT map."),
    wait: float = typer.Option(0.0, "--wait", min=0, help="Wait up to S seconds for another write command on the pin (else exit 5)."),
) -> None:
    """Put a backup's entries back: keys the map lacks are inserted; entries the map holds
    with a newer last_seen are kept unless --overwrite. Nothing is deleted."""
    restore(pin, source, yes=yes, overwrite=overwrite, force=force, wait=wait, say=_say)


def _say(line: str) -> None:
    """Plans name maps and backups (names from files): control characters shown escaped."""
    from ctscope.textsafe import printable

    typer.echo(printable(line))
