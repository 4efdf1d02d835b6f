"""One write command per pin at a time.

Every command that writes a pinned map (resize, restore, delete, clean, flush, and
recovery) holds the pin's lock for its whole run. The lock is an exclusive `flock(2)` on
a file in a root-only directory (`/run/ctscope`, or `$CTSCOPE_LOCK_DIR`), named after the
pin's canonical path, so:

* two ctscope processes writing one pin never interleave; the second refuses at once (or
  after `wait` seconds) with `LockBusy` (exit 5), naming the holder's pid and command;
* a process killed at any point (SIGKILL, OOM) releases it with its last fd: a rerun never
  finds a stale lock and never has to guess whether a pid is still alive;
* `<pin>` and `<pin>_old` share one lock (a resize moves maps between the two names);
* `write_lock` also locks the map behind the pin by its id: the same map pinned under a
  second name (a hard link on the bpffs, `bpftool map pin`) would otherwise have a second
  pin lock, and two write commands through two names would run at once.

bpffs files cannot be opened with open(2), so the lock cannot live on the pin itself. The
lock keeps out other ctscope writers only: Calico's programs and Felix do not take it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ctscope.errors import CtscopeError, LockBusy, PermissionDenied

LOCK_DIR_ENV = "CTSCOPE_LOCK_DIR"
DEFAULT_LOCK_DIR = "/run/ctscope"


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def ensure_private_dir(d: Path, what: str = "lock directory") -> None:
    """The directory exists, is a real directory owned by us and writable by nobody else
    (else another user could pre-create files in it, or swap in a symlink). Also used for
    ctscope's backup directory."""
    _safe_ancestors(Path(os.path.abspath(d)), what)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except PermissionError as e:
        raise PermissionDenied(f"{what} {d}: {e.strerror}: write commands need root (or set "
                               f"{LOCK_DIR_ENV if what == 'lock directory' else 'another directory'} to a directory "
                               "of yours)") from None
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(f"{what} {d}: is not a directory (a symlink?); refusing to use it")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionDenied(f"{what} {d}: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}; "
                           f"expected owned by uid {os.geteuid()} and writable by it alone")


def _safe_ancestors(d: Path, what: str) -> None:
    """Every existing directory above `d` is root's or ours, and one that others may write is
    sticky (as /tmp is): otherwise its owner could rename `d` away and put their own in its
    place between our checks and our writes."""
    euid = os.geteuid()
    for a in reversed(d.parents):
        try:
            st = os.stat(a)  # a link among the parents is judged by where it leads
        except FileNotFoundError:
            return
        if st.st_uid not in (0, euid) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise PermissionDenied(f"{what} {d}: its parent {a} is owned by uid {st.st_uid} with mode "
                                   f"{stat.S_IMODE(st.st_mode):o}; expected every parent owned by root or uid {euid}, "
                                   "and sticky where others may write")


def lock_key(pin: str | os.PathLike[str]) -> str:
    """The lock file's name for a pin: its base name (without `_old`) for people, a hash of
    its canonical path for uniqueness."""
    p = Path(os.path.abspath(pin))
    p = Path(os.path.realpath(p.parent)) / p.name.removesuffix("_old")
    digest = hashlib.sha256(os.fsencode(str(p))).hexdigest()[:16]
    return f"{p.name}-{digest}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextmanager
def pin_lock(pin: str | os.PathLike[str], command: str, *, wait: float = 0.0) -> Iterator[Path]:
    """Hold the write lock of `pin` for the `with` block. Refuses with LockBusy when another
    process holds it for longer than `wait` seconds."""
    d = lock_dir()
    ensure_private_dir(d)
    path = d / lock_key(pin)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise CtscopeError(f"lock file {path}: not a regular file of uid {os.geteuid()}; refusing to use it")
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{pin}: another ctscope write command holds its lock ({_holder(fd)}); "
                                   "one write command per pin at a time: wait for it to finish"
                                   + (f" (waited {wait:g} s)" if wait > 0 else ", or pass --wait SECONDS")) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: ctscope {command} {pin}, since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking it would race with a waiter)


@contextmanager
def map_lock(pin: str | os.PathLike[str], command: str, *, wait: float = 0.0) -> Iterator[None]:
    """The lock of the map behind `pin`, by its map id (nothing when no map is pinned there:
    a recovery may find `<pin>` missing; the command itself reports what is wrong)."""
    from ctscope._native import LiveMap

    try:
        mid = LiveMap(str(pin), writable=False).id
    except (CtscopeError, OSError):
        yield
        return
    with pin_lock(f"/bpf-map-id/map-id-{mid}", f"{command} {pin}", wait=wait):
        yield


@contextmanager
def write_lock(pin: str | os.PathLike[str], command: str, *, wait: float = 0.0) -> Iterator[None]:
    """What every write command holds for its whole run: the pin's lock, then its map's."""
    with pin_lock(pin, command, wait=wait), map_lock(pin, command, wait=wait):
        yield
