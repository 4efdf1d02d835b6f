"""Where Calico pins its CT maps, and finding them under a bpffs mount."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_BPFFS = "/sys/fs/bpf"
GLOBALS = "tc/globals"

# Newest first: the pin `ctscope dump` picks when none is named.
CT_PIN_NAMES = {
    4: ["cali_v4_ct4", "cali_v4_ct3", "cali_v4_ct2"],
    6: ["cali_v6_ct4", "cali_v6_ct3"],
}


def globals_dir(bpffs: str | os.PathLike[str] = DEFAULT_BPFFS) -> Path:
    return Path(bpffs) / GLOBALS


def is_ct_pin_name(name: str) -> bool:
    base = name.removesuffix("_old")
    return any(base in names for names in CT_PIN_NAMES.values())


def ct_pin_version(name: str) -> tuple[int, int] | None:
    """(version, family) a Calico CT pin name stands for: what a loader expects at that path."""
    m = re.fullmatch(r"cali_v([46])_ct([234])(?:_old)?", name)
    return (int(m.group(2)), int(m.group(1))) if m else None


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
