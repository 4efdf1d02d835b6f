"""`ctscope synth`: create and pin a realistic synthetic Calico CT map."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ctscope._native import CT_DEFAULT_MAX_ENTRIES, synth_map
from ctscope.cli.app import app
from ctscope.errors import BadArgument

DEFAULT_MAX_ENTRIES = CT_DEFAULT_MAX_ENTRIES  # Calico's default bpfMapSizeConntrack (layout.rs)


def default_max_entries(entries: int) -> int:
    """Calico's default, or enough room that an LRU map does not evict (fill ≤ 80%)."""
    return max(DEFAULT_MAX_ENTRIES, -(-entries * 5 // 4))


def synth(pin: str, entries: int, max_entries: int | None = None, version: int = 4, ipv6: bool = False,
          seed: int = 0, layout: str | None = None, now_ns: int | None = None, profile: str = "classic") -> dict:
    """Python API behind the command; returns what was written."""
    layout = layout or {2: "v2", 3: "v3", 4: "v4"}.get(version)
    if layout is None:
        raise BadArgument(f"--version {version}: expected 2, 3 or 4")
    if ipv6 and layout == "v2":
        raise BadArgument("Calico's v2 CT map is IPv4 only: drop --ipv6 or use --version 3/4")
    _check_range("--entries", entries, 0, U64_MAX)
    if max_entries is not None:
        # 0 is no size at all (the kernel refuses it), not "the default".
        _check_range("--max-entries", max_entries, 1, U32_MAX)
    _check_range("--seed", seed, 0, U64_MAX)
    if now_ns is not None:
        _check_range("--now-ns", now_ns, 0, U64_MAX)
    _check_pin_dir(Path(pin))
    size = default_max_entries(entries) if max_entries is None else max_entries
    if size > U32_MAX:
        raise BadArgument(f"--entries {entries}: a map holds at most {U32_MAX} entries")
    return synth_map(str(pin), entries, size, layout, ipv6, seed, now_ns, profile)


def _check_pin_dir(pin: Path) -> None:
    """Before filling a map (seconds for millions of entries): the pin must go on a bpffs;
    missing directories there are made, as Calico's tc/globals would be."""
    from ctscope._native import on_bpffs

    anchor = pin.parent if str(pin.parent) else Path(".")
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not on_bpffs(str(anchor)):
        raise BadArgument(f"{pin}: not on a BPF filesystem (bpffs); mount one (mount -t bpf bpf DIR) and pin there")
    pin.parent.mkdir(parents=True, exist_ok=True)


U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise BadArgument(f"{name} {value}: expected {lo} .. {hi}")


@app.command("synth")
def synth_cmd(
    pin: str = typer.Argument(..., help="Where to pin the new map (on a bpffs)."),
    entries: int = typer.Option(..., "--entries", help="How many entries to write."),
    max_entries: Optional[int] = typer.Option(None, "--max-entries", help=f"Map size (default: {CT_DEFAULT_MAX_ENTRIES}, or 1.25 x entries)."),
    version: int = typer.Option(4, "--version", help="CT map version: 2, 3 or 4."),
    ipv6: bool = typer.Option(False, "--ipv6", help="An IPv6 map (cali_v6_ct*)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same map)."),
    layout: Optional[str] = typer.Option(None, "--layout", help="Override: v3-created writes Calico <= 3.29 ct3 bytes."),
    now_ns: Optional[int] = typer.Option(None, "--now-ns", help="Monotonic time the idle ages count back from (default: now)."),
    profile: str = typer.Option("classic", "--profile", help="classic | node (a busy node's address and port spread; README \"Performance\")."),
) -> None:
    """Create, fill and pin a synthetic Calico CT map (refuses to overwrite a pin)."""
    r = synth(pin, entries, max_entries, version, ipv6, seed, layout, now_ns, profile)
    typer.echo(f"pinned {r['name']} ({r['map_type']}, layout {r['layout']}) at {Path(pin)}: "
               f"{r['entries']:,} entries, max_entries {r['max_entries']:,}")
