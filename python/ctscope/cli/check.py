"""`ctscope check`: would libbpf reuse each pinned CT map? Exit 0 yes, 1 no."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ctscope import felixconfig
from ctscope._native import MAX_ENTRIES_LIMIT
from ctscope.repair import check as checks
from ctscope.cli.app import app
from ctscope.errors import BadArgument
from ctscope.pins import DEFAULT_BPFFS


@app.command("check")
def check_cmd(
    pins: Optional[list[str]] = typer.Argument(None, help="Pinned maps (default: every CT pin under BPFFS/tc/globals)."),
    bpffs: str = typer.Option(DEFAULT_BPFFS, "--bpffs", help="bpffs mount to look under when no PIN is given."),
    objects: Optional[list[str]] = typer.Option(None, "--object", help="BPF ELF object (.o) whose .maps to compare; repeatable."),
    felix_config: Optional[str] = typer.Option(None, "--felix-config", help="FelixConfiguration as kubectl -o yaml/-o json prints it."),
    size_file: Optional[str] = typer.Option(None, "--size-file", help=f"Felix's auto-grow size file (default {felixconfig.DEFAULT_SIZE_FILE}, read with --felix-config)."),
    max_entries: Optional[int] = typer.Option(None, "--max-entries", help="Expected max_entries."),
    loader: str = typer.Option("plain", "--loader", help="How --object is loaded: plain (bpftool/libbpf: compiled max_entries) or calico (sets the configured size first)."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    no_count: bool = typer.Option(False, "--no-count", help="Skip counting entries (fill ratio)."),
    recover: bool = typer.Option(False, "--recover", help="Also recover interrupted migrations (Felix's rule; needs --yes)."),
    yes: bool = typer.Option(False, "--yes", help="Allow --recover to act."),
    wait: float = typer.Option(0.0, "--wait", metavar="SECONDS", help="With --recover: wait up to SECONDS for another ctscope write command holding the pin's lock (default 0: refuse at once, exit 5)."),
) -> None:
    """Compare pinned CT maps with what their loader expects, on libbpf's six fields."""
    if loader not in ("plain", "calico"):
        raise BadArgument(f"--loader {loader!r}: expected plain or calico")
    if max_entries is not None and not 0 < max_entries <= MAX_ENTRIES_LIMIT:
        raise BadArgument(f"--max-entries {max_entries}: expected 1 .. {MAX_ENTRIES_LIMIT}")
    configured = felixconfig.felix_size(felix_config, size_file)
    targets = pins or [str(p) for p in checks.discover_pins(bpffs)]
    if not targets:
        raise BadArgument(f"no CT pins under {bpffs}/tc/globals: name PINs or use --bpffs")
    # Remedies are command lines to copy: never wrap them at 80 columns when piped.
    out = Console(stderr=as_json, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    reports = []
    for pin in targets:
        recovered: list[str] = []
        if recover:
            recovered = _recover(pin, yes, out, wait)
        rep = checks.check_pin(pin, objects=objects or [], configured=configured, max_entries=max_entries,
                               loader=loader, count=not no_count)
        rep.recovered = "; ".join(recovered) or None
        reports.append(rep)
    errors = [r for r in reports if r.error]
    if as_json:
        print(json.dumps({"compatible": all(r.compatible for r in reports),
                          "max_entries_checked": all(r.max_entries_check == "checked" for r in reports),
                          "maps": [r.as_dict() for r in reports]}, indent=2, default=str))
    else:
        for rep in reports:
            _print(out, rep)
    if errors:
        # A pin that could not be checked is an error (not found, permission, ...), whatever
        # the others' verdicts: its own exit code, not the mismatch code 1.
        raise typer.Exit(errors[0].exit_code)
    raise typer.Exit(0 if all(r.compatible for r in reports) else 1)


def _recover(pin: str, yes: bool, out: Console, wait: float) -> list[str]:
    from ctscope.repair.common import canonical_pin
    from ctscope.repair.recover import needs_recovery, recover_locked

    p = canonical_pin(pin)
    if not needs_recovery(p):
        return []
    if not yes:
        out.print(f"{pin}: would recover the interrupted migration (Felix's rule); add --yes")
        return []
    # Under the pin's write lock: a migration another run is in the middle of is refused
    # (exit 5), not "recovered".
    return recover_locked(p, lambda s: out.print(f"{pin}: {s}"), wait=wait, command="check --recover") or []


def _print(con: Console, rep: checks.MapReport) -> None:
    if rep.error:
        from ctscope.textsafe import printable

        print(f"ctscope: error: {printable(' '.join(str(rep.error).split()))}", file=sys.stderr)
        return
    verdict = "[green]compatible[/]" if rep.compatible else "[red]MISMATCH[/]"
    if rep.compatible and rep.max_entries_check == "assumed":
        verdict += " (max_entries as Calico's default, assumed: no --felix-config)"
    elif rep.compatible and rep.max_entries_check == "not checked":
        verdict = ("[yellow]compatible on type, sizes and flags; max_entries NOT checked[/]" if not rep.superseded_by
                   else verdict + " (max_entries not checked: superseded)")
    p = rep.params
    what = ", ".join(x for x in (rep.name, f"map id {p['id']}" if p else "") if x)
    head = f"[bold]{rep.pin}[/]" + (f" ({what})" if what else "") + f": {verdict}"
    con.print(head)
    if rep.recovered:
        con.print(f"  recovered: {rep.recovered}")
    if rep.rows:
        t = Table(show_header=True, box=None, padding=(0, 2))
        for col in ("field", "pinned", "expected", "source", "verdict"):
            t.add_column(col, justify="right" if col in ("pinned", "expected") else "left")
        for r in rep.rows:
            t.add_row(r.field, checks.fmt_value(r.field, r.pinned), checks.fmt_value(r.field, r.expected), r.source,
                      ("ok (assumed)" if r.ok else "[yellow]differs (assumed)[/]") if r.assumed
                      else "ok" if r.ok else "[red]MISMATCH[/]")
        con.print(t)
    for v in rep.objects:
        con.print(f"  object {v.object}: map {v.name} compiled max_entries {v.compiled['max_entries']:,}"
                  + (f", Calico's loader would set {v.loader_max_entries:,}" if v.loader_max_entries is not None else "")
                  + f"; {v.note}")
    if rep.entries is not None and rep.fill is not None:
        con.print(f"  entries: {rep.entries:,} of {p['max_entries']:,} ({rep.fill:.1%} full)")
    if rep.libbpf_message:
        con.print("  libbpf would print:")
        for line in rep.libbpf_message:
            con.print(f"    {line}", highlight=False, markup=False)
    if rep.interrupted:
        con.print(f"  [yellow]interrupted migration[/]: {rep.interrupted}")
    for n in rep.notes:
        con.print(f"  note: {n}")
    for r in rep.remedy:
        con.print(f"  remedy: {r}", highlight=False, markup=False)
