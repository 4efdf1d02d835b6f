"""Options shared by the deleting commands (delete, clean, flush)."""

from __future__ import annotations

import typer

from ctscope.act import DEFAULT_BACKUP_DIR
from ctscope.pins import DEFAULT_BPFFS

Pin = typer.Argument(None, help="Pinned CT map (default: newest cali_v4_ct* under BPFFS/tc/globals).")
Bpffs = typer.Option(DEFAULT_BPFFS, "--bpffs", help="bpffs mount to look for the default pin under.")
Ipv6 = typer.Option(False, "--ipv6", help="Default pin: the cali_v6_* map.")
Yes = typer.Option(False, "--yes", help="Act. Without it: a dry run (count and first rows; nothing changes).")
Max = typer.Option(None, "--max", min=0, help="Refuse to delete more than N entries (default: the larger of 10,000 and 10% of the entries).")
Force = typer.Option(False, "--force", help="Delete even more than --max.")
BackupDir = typer.Option(None, "--backup-dir", help=f"Directory for the backup (default $CTSCOPE_BACKUP_DIR or {DEFAULT_BACKUP_DIR}).")
Wait = typer.Option(0.0, "--wait", min=0, help="Wait up to S seconds for another write command on the pin (else exit 5 at once).")
Layout = typer.Option("auto", "--layout", help="auto|v2|v3-created|v3|v4")
Json = typer.Option(False, "--json", help="Print the result as JSON.")


def emit(res, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(res.as_dict(), indent=2))
