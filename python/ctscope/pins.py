"""Where Calico pins its CT maps, and finding them under a bpffs mount."""

from __future__ import annotations

import os
from pathlib import Path

from ctscope._native import ct_pin_names, ct_pin_version, is_ct_pin_name

__all__ = ["CT_PIN_NAMES", "DEFAULT_BPFFS", "GLOBALS", "ct_pin_version", "default_ct_pin", "globals_dir",
           "is_bpffs_own_file", "is_ct_pin_name", "list_pins"]

DEFAULT_BPFFS = "/sys/fs/bpf"
GLOBALS = "tc/globals"

# {family: Calico's CT pin names, newest first}: the pin `ctscope dump` picks when none is
# named. The names and `ct_pin_version`/`is_ct_pin_name` are layout.rs's (one owner).
CT_PIN_NAMES = ct_pin_names()


def globals_dir(bpffs: str | os.PathLike[str] = DEFAULT_BPFFS) -> Path:
    return Path(bpffs) / GLOBALS


def default_ct_pin(bpffs: str | os.PathLike[str] = DEFAULT_BPFFS, ipv6: bool = False) -> Path:
    """The live CT pin: newest version present under DIR/tc/globals."""
    d = globals_dir(bpffs)
    for name in CT_PIN_NAMES[6 if ipv6 else 4]:
        p = d / name
        if p.exists():
            return p
    # Name the newest: the error then says which pin was expected where.
    return d / CT_PIN_NAMES[6 if ipv6 else 4][0]


def is_bpffs_own_file(name: str) -> bool:
    """bpffs refuses names with a dot to everyone but the kernel, which keeps them for its
    own files (`maps.debug`, `progs.debug` of bpf_preload): those are never pinned objects."""
    return "." in name


def list_pins(bpffs: str | os.PathLike[str] = DEFAULT_BPFFS, all_pins: bool = False) -> list[Path]:
    """CT pins under DIR/tc/globals (or, with all_pins, every pinned object under DIR)."""
    if all_pins:
        root = Path(bpffs)
        out = []
        for dirpath, _dirs, files in os.walk(root):
            out.extend(Path(dirpath) / f for f in files if not is_bpffs_own_file(f))
        return sorted(out)
    d = globals_dir(bpffs)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if is_ct_pin_name(p.name))
