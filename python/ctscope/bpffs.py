"""Private bpffs mounts: every `mount -t bpf` is its own instance, so demos, benchmarks
and tests pin maps there without touching the node's /sys/fs/bpf. Unmounting frees
every map pinned in it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ctscope.errors import PermissionDenied

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MNT_DETACH = 2


def mount_bpffs(target: str | os.PathLike[str]) -> None:
    if _libc.mount(b"bpf", os.fsencode(target), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        if err in (1, 13):  # EPERM, EACCES
            raise PermissionDenied(
                f"mounting a bpffs at {target}: {os.strerror(err)}: needs root (CAP_SYS_ADMIN) and CAP_BPF")
        raise OSError(err, f"mount -t bpf: {os.strerror(err)}", str(target))


def umount(target: str | os.PathLike[str]) -> None:
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount: {os.strerror(err)}", str(target))


@contextmanager
def private_bpffs(prefix: str = "ctscope-bpffs-") -> Iterator[Path]:
    """A fresh bpffs mounted on a temporary directory, with `tc/globals` created."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        mount_bpffs(d)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    try:
        (d / "tc" / "globals").mkdir(parents=True)
        yield d
    finally:
        umount(d)
        shutil.rmtree(d, ignore_errors=True)
