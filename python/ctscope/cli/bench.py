"""`ctscope bench`: dump throughput against the raw batch-lookup floor."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ctscope import bench as benchmark
from ctscope.cli.app import app
from ctscope.errors import BadArgument


@app.command("bench")
def bench_cmd(
    pin: Optional[str] = typer.Argument(None, help="Map to measure (default: synthetic 1,000,000-entry IPv4 and IPv6 maps in a private bpffs)."),
    entries: int = typer.Option(1_000_000, "--entries", min=1, max=2**32 - 1, help="Size of the synthetic map when no PIN is given."),
    repeat: int = typer.Option(5, "--repeat", min=1, help="Fresh-process runs per row (median and best are reported)."),
    no_bpftool: bool = typer.Option(False, "--no-bpftool", help="Skip the (slow) bpftool comparison."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    write: bool = typer.Option(False, "--write", help="Measure `clean` (deletes!) against a batch dump + batch delete; without PIN on a synthetic map."),
) -> None:
    """Library calls and whole commands against the raw C floor, cold (fresh processes), median and best.
    `--write`: `clean` against a batch dump + batch delete of the same keys."""
    if write:
        from ctscope import bench_write

        if pin:
            raise BadArgument("bench --write deletes entries: it runs on a synthetic map only (give no PIN)")
        with benchmark.map_to_measure(None, entries) as p:
            r = bench_write.run(p, repeat)
        print(json.dumps(r, indent=2) if as_json else bench_write.format_report(r))
        return
    if pin:  # a given map: its own family only
        r = benchmark.run(pin, repeat, not no_bpftool)
    else:  # the synthetic maps: IPv4, and IPv6 for the rows that decode addresses
        with benchmark.map_to_measure(None, entries) as p, benchmark.map_to_measure(None, entries, ipv6=True) as p6:
            r = benchmark.run(p, repeat, not no_bpftool, pin6=p6)
    print(json.dumps(r, indent=2) if as_json else benchmark.format_report(r))
