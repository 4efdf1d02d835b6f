"""The one owner of writing output files (every `-o FILE` and `snapshot --dir DIR`).

Rules (README "Output files"):

* The path is resolved component by component. A symlink is followed only when it is owned
  by the caller (or root) and does not sit in a world-writable directory, sticky or not;
  otherwise the command refuses (exit 4) and writes nothing. Dangling links are judged the
  same way. A file, FIFO or device that another user owns in a world-writable directory is
  refused too, and so is creating anything in a world-writable directory without the
  sticky bit (anyone could swap names there).
* A regular file (new or replaced) is written to a temporary `.NAME.XXXX.partial` created
  with O_CREAT|O_EXCL|O_NOFOLLOW beside it (relative to the directory's fd, so the directory
  cannot be swapped meanwhile), fsynced and renamed over the name only when complete.
  The writer holds an flock on its temporary. One a killed run left (SIGKILL, a power loss)
  is removed by the next write of the same NAME: a regular file of ours, named as ctscope
  names them, that no process holds locked and that has not changed for STALE_AFTER_S.
* A replaced file keeps its permission bits (set-id bits dropped) and, where possible, its
  owner and group. A new file is 0600 whatever the umask (`private`, the default: dumps,
  snapshots, reports, stats and query results hold connection data) or, for `metrics`
  (aggregate counters a node_exporter running as another user must read), 0644 & ~umask.
* Devices, FIFOs and sockets (`-o /dev/null`, a named pipe) and already open descriptors
  (`/dev/stdout`, `/dev/fd/N`) are written in place.
* New directories (`snapshot --dir`'s partitions) are made 0700 whatever the umask.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ctscope.errors import BadArgument, PermissionDenied

_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS
# A temporary unchanged this long, and unlocked, is a killed run's (a live writer locks its
# own at once; the age covers the instant between its creation and the lock).
STALE_AFTER_S = 60
_PARTIAL = ".partial"


def _world_writable(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat.S_IWOTH)


def _sticky(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat.S_ISVTX)


def denied(directory: str, why: str) -> PermissionDenied:
    """The output-permission error: exit 4, naming the directory."""
    return PermissionDenied(f"{directory}: cannot write the output there ({why})")


def _check_link(spec: str, link: str, st: os.stat_result, directory: str) -> None:
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        raise PermissionDenied(f"{spec}: refusing to follow symlink {link}: it is owned by uid {st.st_uid}, "
                               f"not by you (uid {euid})")
    if _world_writable(os.stat(directory)):
        raise PermissionDenied(f"{spec}: refusing to follow symlink {link}: it sits in world-writable "
                               f"directory {directory}")


def resolve(path: str | os.PathLike[str], *, make_dirs: bool = False) -> tuple[str, os.stat_result | None]:
    """`path` resolved like the kernel would, checking every symlink on the way (see the
    module doc). Returns the real path and its lstat (None when it does not exist yet).
    With `make_dirs`, missing directories on the way (and the last component) are made 0700."""
    spec = os.fspath(path)
    if not spec:
        raise BadArgument("empty output path")
    full = spec if spec.startswith("/") else os.path.join(os.getcwd(), spec)
    todo = [c for c in full.split("/") if c not in ("", ".")]
    todo.reverse()
    cur, st, links = "/", os.lstat("/"), 0
    while todo:
        c = todo.pop()
        if c == "..":
            cur = os.path.dirname(cur)
            st = os.lstat(cur)
            continue
        nxt = os.path.join(cur, c)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            if not todo and not make_dirs:
                return nxt, None
            if not make_dirs:
                raise BadArgument(f"{spec}: directory {nxt} does not exist") from None
            _mkdir(nxt, cur)
            st = os.lstat(nxt)
        except PermissionError as e:
            raise denied(cur, e.strerror) from None
        except NotADirectoryError:
            raise BadArgument(f"{spec}: {cur} is not a directory") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise BadArgument(f"{spec}: too many levels of symbolic links")
            _check_link(spec, nxt, st, cur)
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = "/"
            todo.extend(reversed([t for t in target.split("/") if t not in ("", ".")]))
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            raise BadArgument(f"{spec}: {nxt} is not a directory")
        cur = nxt
    return cur, st


def _mkdir(path: str, parent: str) -> None:
    pst = os.stat(parent)
    if _world_writable(pst) and not _sticky(pst):
        raise denied(parent, "world-writable without the sticky bit: anyone could replace what is made there")
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700, follow_symlinks=False)  # whatever the umask
    except FileExistsError:
        pass  # made meanwhile (another snapshot run): re-checked by the caller's lstat
    except (PermissionError, OSError) as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise denied(parent, e.strerror) from None
        raise BadArgument(f"{path}: cannot make the directory ({e.strerror})") from None


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """Make directory `path` (and missing parents) 0700, checking links as output paths do."""
    real, st = resolve(path, make_dirs=True)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise BadArgument(f"{os.fspath(path)}: not a directory")
    return Path(real)


def is_open_descriptor(spec: str) -> bool:
    """/dev/stdout, /dev/fd/N, /proc/self/fd/N: an already open descriptor, whatever it is."""
    return spec in ("/dev/stdout", "/dev/stderr") or spec.startswith(("/dev/fd/", "/proc/self/fd/"))


@contextmanager
def output_file(path: str | os.PathLike[str], *, private: bool = True,
                stale_names: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Yield the path to write `path`'s contents to (see the module doc). Writers open the
    yielded path by name (ctscope's Rust writers and polars' do), so for a regular file it names the already
    created temporary through /proc/self/fd: nothing can be swapped in under that name.
    `stale_names`: the other final names whose killed runs' temporaries this write removes
    too (`snapshot --dir` names each file after its start time, so never writes one twice)."""
    spec = os.fspath(path)
    if is_open_descriptor(spec):
        yield Path(spec)
        return
    real, st = resolve(spec)
    parent = os.path.dirname(real) or "/"
    try:
        pst = os.stat(parent)
    except OSError as e:
        raise BadArgument(f"{spec}: directory {parent} is unusable ({e.strerror})") from None
    euid = os.geteuid()
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise BadArgument(f"{spec}: is a directory; expected a file name")
        if st.st_uid != euid and _world_writable(pst):
            raise PermissionDenied(f"{spec}: refusing to write {real}: it is owned by uid {st.st_uid} "
                                   f"and sits in world-writable directory {parent}")
        if not stat.S_ISREG(st.st_mode):
            yield Path(real)  # device, FIFO, socket: written in place
            return
    if _world_writable(pst) and not _sticky(pst):
        raise denied(parent, "world-writable without the sticky bit: anyone could replace the file there")
    try:
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _error(spec, parent, e) from None
    name = os.path.basename(real)
    fd, tmp = -1, ""
    try:
        remove_stale_partials(dfd, name, also=stale_names)
        for _ in range(100):
            tmp = f".{name}.{os.urandom(4).hex()}{_PARTIAL}"  # (secrets' import costs 4 ms)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dfd)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours: a rerun leaves it alone
                os.fchmod(fd, 0o600)  # whatever the umask, until the final mode is set
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise _error(spec, parent, e) from None
        else:
            raise BadArgument(f"{spec}: cannot create a temporary file in {parent}")
        via_proc = f"/proc/self/fd/{fd}"
        try:
            yield Path(via_proc if os.path.exists(via_proc) else os.path.join(parent, tmp))
            if st is not None:  # a replaced file keeps its mode and (where we may) its owner
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o1777)
                if (st.st_uid, st.st_gid) != (euid, os.getegid()):
                    try:
                        os.fchown(fd, st.st_uid, st.st_gid)
                    except PermissionError:
                        pass
            elif not private:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o644 & ~umask)
            os.fsync(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            tmp = ""
            os.fsync(dfd)
        except OSError as e:
            if e.filename in (via_proc, os.path.join(parent, tmp), tmp, name) or e.filename is None:
                raise _error(spec, parent, e) from None
            raise
    finally:
        if tmp and fd >= 0:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
        if fd >= 0:
            os.close(fd)
        os.close(dfd)


def _is_partial_of(entry: str, name: str) -> bool:
    prefix = f".{name}."
    tag = entry[len(prefix):-len(_PARTIAL)]
    return (entry.startswith(prefix) and entry.endswith(_PARTIAL) and len(tag) == 8
            and all(c in "0123456789abcdef" for c in tag))


def _partial_name(entry: str) -> str | None:
    """The final name a temporary `.NAME.XXXXXXXX.partial` is for, or None."""
    base = entry[1:-len(_PARTIAL) - 9]
    return base if base and entry.startswith(".") and _is_partial_of(entry, base) else None


def remove_stale_partials(dfd: int, name: str, *, now: float | None = None,
                          also: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the temporaries of `name` (and of the names `also` accepts) in directory `dfd`
    that killed runs left (see the module doc); returns their names. Anything else (another
    user's file, a link, a locked or recently changed temporary, an unreadable directory) is
    left as it is."""
    removed: list[str] = []

    def wanted(e: str) -> bool:
        base = _partial_name(e)
        return base is not None and (base == name or (also is not None and also(base)))

    try:
        entries = [e for e in os.listdir(dfd) if wanted(e)]
    except OSError:
        return removed
    now = time.time() if now is None else now
    for e in entries:
        try:
            fd = os.open(e, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            continue  # a link, gone, or not ours to read
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid()
                    or now - st.st_mtime < STALE_AFTER_S):  # ours are never hard-linked
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer's
            now_there = os.stat(e, dir_fd=dfd, follow_symlinks=False)
            if (now_there.st_dev, now_there.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(e, dir_fd=dfd)
                removed.append(e)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _error(spec: str, parent: str, e: OSError) -> Exception:
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return denied(parent, e.strerror)
    return BadArgument(f"{spec}: cannot write the output file in {parent} ({e.strerror})")
