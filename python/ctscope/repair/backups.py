"""Backup files of the repair commands: default names, refusing a target that could not be
written before anything changes, and the partial files a killed run left behind."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from ctscope.errors import BadArgument, PermissionDenied


STAMP_RE = r"\d{8}T\d{6}Z(-\d+)?"  # what free_backup_path appends to a stem
PARTIAL_RE = re.compile(r"^\.(?P<file>.+)\.(?P<pid>\d+)\.partial$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_partials(directory: Path, ours: Callable[[str], bool]) -> list[tuple[Path, int]]:
    """Partial backup files (`.<backup>.<pid>.partial`, written before the rename into place)
    in `directory` whose final name `ours` claims and whose writer is gone: left by a kill
    during a backup. Those of a live pid (a concurrent run) are not touched."""
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in sorted(names):
        m = PARTIAL_RE.match(name)
        if not m or not ours(m["file"]):
            continue
        pid = int(m["pid"])
        path = directory / name
        if pid != os.getpid() and not _pid_alive(pid) and path.is_file() and not path.is_symlink():
            out.append((path, pid))
    return out


def stale_partial_backups(bpath: Path, map_name: str) -> list[tuple[Path, int]]:
    """resize's: those of `bpath` or of this map's default backup names."""
    default = re.compile(rf"^ctscope-backup-{re.escape(map_name)}-{STAMP_RE}\.arrow$")
    return stale_partials(bpath.parent, lambda f: f == bpath.name or bool(default.match(f)))


def free_backup_path(directory: str | os.PathLike[str], stem: str) -> Path:
    """`DIR/<stem>-<UTC time>.arrow`, or its first free `-N` (a free one when planned; the write
    claims its name atomically, so two runs in the same second get two files)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = Path(directory) / f"{stem}-{stamp}.arrow"
    n = 1
    while os.path.lexists(path):  # a rerun within the same second: backups are never overwritten
        n += 1
        path = Path(directory) / f"{stem}-{stamp}-{n}.arrow"
    return path


def default_backup_path(name: str, directory: str | os.PathLike[str] = ".") -> Path:
    """resize's default backup name."""
    return free_backup_path(directory, f"ctscope-backup-{name}")


def check_backup_target(bpath: Path, explicit: bool) -> None:
    """Refuse, before anything changes, a backup that could not be written: an explicit
    name that exists (backups are never overwritten), a missing or unwritable directory."""
    if explicit and os.path.lexists(bpath):
        raise BadArgument(f"--backup {bpath}: already exists; a backup is never overwritten: name a new file")
    d = bpath.parent if str(bpath.parent) else Path(".")
    if not d.is_dir():
        raise BadArgument(f"--backup {bpath}: directory {d} does not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        raise PermissionDenied(f"{bpath}: cannot write the backup: directory {os.path.abspath(d)} is not writable "
                               "(read-only or no permission); choose another with --backup")
