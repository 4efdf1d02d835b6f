"""Resizing a pinned CT map without losing an entry, crash-safe at every step.

Order (each step leaves a state a rerun, or Felix, can finish or undo):

  plan       read-only: layout check, entry count, programs using the map
  backup     every entry to an Arrow IPC file (fsynced, renamed into place)
  create     a twin map (same type, sizes, flags, name; new max_entries), unpinned:
             if we die it vanishes with our fd
  copy       BPF_MAP_UPDATE_BATCH into the twin
  verify     the twin holds exactly the snapshot's key->value set
  pin-old    the live map pinned a second time at `<pin>_old` (Felix's convention)
  pin-new    the twin pinned at a hidden swap name beside `<pin>`
  swap       rename(2) of the swap pin over `<pin>`: one atomic step, so a loader
             always finds a map at `<pin>`
  delta      entries changed in the old map since the snapshot, copied again by the
             freshness rule (a value the new map already holds with a newer or equal
             last_seen is kept: a writer that reopened the pin wrote it), decided per key
             at the moment of writing
  remove-old `<pin>_old` unlinked (unless --keep-old)

Recovery is Felix's rule (`PinnedMap.EnsureExists`): if `<pin>_old` exists the migration
was interrupted, so `<pin>_old` goes back to `<pin>` (here by one atomic rename) and the
stale swap pin is removed. Up to `verify` nothing on the bpffs has changed at all. When
`<pin>` already holds the new map (killed after the swap, or `--keep-old`), entries written
to it since are first carried into `<pin>_old` (those it lacks, or holds with an older
last_seen), so putting `<pin>_old` back loses none; if they do not fit, recovery refuses
unless forced.

Which entry is fresher: Calico's CT values carry last_seen (u64 at value offset 8 in every
version, facts §4), so between two maps the entry with the newer last_seen wins; for other
maps only Felix's rule (the value differs) is available.

Every acting run (resize, --delta, --recover, `check --recover`) holds the pin's write lock
(`ctscope.pinlock`) from before it looks at the pins until it is done, so two runs never
interleave and a run never "recovers" a migration another run is in the middle of.

What stays racy: a process or program still holding the old map writes there after the
delta snapshot; those writes are not in the new map (a later --delta copies them while
`<pin>_old` is kept). The plan and the final notes name them (programs_using_map,
map_holders).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctscope._native import (LiveMap, map_holders, on_bpffs, programs_using_map, raw_read, read_backup, rename_pin,
                             swap_pin_name)
from ctscope.check import LAYOUTS, RELEASES, looks_like
from ctscope.errors import BadArgument, CtscopeError, NotACtMap, PermissionDenied, PinNotFound
from ctscope.pinlock import pin_lock
from ctscope.pins import ct_pin_version

PAUSE_ENV = "CTSCOPE_TEST_PAUSE_AFTER"
PHASES = ("plan", "backup", "create", "copy", "verify", "pin-old", "pin-new", "swap", "delta", "remove-old")
CRASH_ENV = "CTSCOPE_TEST_CRASH_AFTER"

Say = Callable[[str], None]


def is_ct_layout(params: dict[str, Any]) -> bool:
    """Sizes of a Calico CT layout (so values carry last_seen): the core's detection sets a
    family exactly then (layout.rs `detect`)."""
    return params.get("family") is not None


def crash_point(phase: str) -> None:
    """Test hook: `CTSCOPE_TEST_CRASH_AFTER=<phase>` kills the process with SIGKILL right
    after that phase, as an OOM kill or a node reboot would (no cleanup runs)."""
    if os.environ.get(CRASH_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) == phase:
        # Test hook: stop (SIGSTOP) right after that phase until a SIGCONT, so a test can
        # start a second command while this one is mid-migration, without timing guesses.
        os.kill(os.getpid(), signal.SIGSTOP)


def canonical_pin(pin: str | os.PathLike[str]) -> Path:
    """The pin's path with its directory resolved; refuses pins outside a bpffs, and
    symlinks (so no path component leads ctscope out of the bpffs)."""
    p = Path(pin)
    if not p.is_absolute():
        p = Path.cwd() / p
    parent = Path(os.path.realpath(p.parent))
    if not parent.is_dir():
        raise PinNotFound(f"{pin}: directory {p.parent} does not exist")
    if not on_bpffs(str(parent)):
        raise NotACtMap(f"{pin}: not on a BPF filesystem (bpffs); resize and restore act only on pins in a bpffs mount "
                        "such as /sys/fs/bpf/tc/globals")
    q = parent / p.name
    if q.is_symlink():
        raise NotACtMap(f"{pin}: is a symlink; give the pin itself (ctscope does not follow links)")
    return q


def old_pin(pin: Path) -> Path:
    return pin.with_name(pin.name + "_old")


def needs_recovery(pin: Path) -> bool:
    return os.path.lexists(old_pin(pin)) or os.path.lexists(swap_pin_name(str(pin)))


def recover(pin: Path, say: Say, *, force: bool = False) -> list[str]:
    """Felix's rule for an interrupted migration: `<pin>_old` back to `<pin>`; remove our
    stale swap pin. When `<pin>` holds another map (the new one, after the swap), first carry
    into `<pin>_old` the entries of `<pin>` it lacks or holds with an older last_seen, and
    verify them: otherwise putting `<pin>_old` back would lose what was written since. If
    they do not fit `<pin>_old`, refuse (BadArgument) unless `force`. Returns what was done."""
    done: list[str] = []
    swap = Path(swap_pin_name(str(pin)))
    if os.path.lexists(swap):
        os.unlink(swap)
        done.append(f"removed the stale swap pin {swap.name} (a twin map that was never swapped in)")
    old = old_pin(pin)
    if os.path.lexists(old):
        if old.is_symlink():
            raise NotACtMap(f"{old}: is a symlink; refusing to recover through it")
        oldm = LiveMap(str(old))
        old_id = oldm.id
        cur = None
        if os.path.lexists(pin):
            try:
                cur = LiveMap(str(pin))
            except CtscopeError:
                cur = None
        cur_id = cur.id if cur is not None else None
        if cur is not None and cur_id != old_id:
            done += _carry_back(pin, cur, oldm, force=force)
            users = programs_using_map(cur_id)
            if users:
                done.append(f"note: {_prog_list(users)} use the discarded map id {cur_id}; they keep it until reloaded")
            holders = map_holders(cur_id)
            if holders:
                done.append(f"note: {_holder_list(holders)} hold the discarded map id {cur_id} open; what they write "
                            "to it from now on is lost (restart them)")
        rename_pin(str(old), str(pin))
        what = ("was the same map" if cur_id == old_id else
                "was missing" if cur_id is None else f"held map id {cur_id}, now discarded")
        done.append(f"restored {old.name} (map id {old_id}) to {pin.name} ({pin.name} {what}): Felix's rule for an "
                    "interrupted migration")
    for line in done:
        say(line)
    return done


def _locked(pin: Path, command: str, act: bool, wait: float):
    """The pin's write lock for an acting run (nothing for a plan, which changes nothing)."""
    if wait < 0:
        raise BadArgument(f"--wait {wait:g}: expected seconds >= 0")
    return pin_lock(pin, command, wait=wait) if act else contextlib.nullcontext()


def recover_locked(pin: Path, say: Say, *, force: bool = False, wait: float = 0.0,
                   command: str = "resize --recover") -> list[str] | None:
    """`recover` under the pin's write lock; None when, once the lock is held, there is
    nothing to recover (another run finished meanwhile)."""
    with _locked(pin, command, True, wait):
        if not needs_recovery(pin):
            return None
        return recover(pin, say, force=force)


def recovery_plan(pin: Path) -> str:
    """What `recover` would do, in words (read-only)."""
    old = old_pin(pin)
    back = f"put {old.name} back at {pin.name} (Felix's rule)"
    if not os.path.lexists(old):
        return f"remove the stale swap pin {Path(swap_pin_name(str(pin))).name}"
    try:
        oldm, cur = LiveMap(str(old)), LiveMap(str(pin))
    except CtscopeError:
        return back
    if oldm.id == cur.id:
        return back
    sel, room, rule, old_snap = _carry_selection(pin, cur, oldm)
    lost = max(0, len(sel.add) - room)
    what = f"carry {sel.count:,} entries of {pin.name} into {old.name} (rule: {rule})"
    if lost:
        what += (f", but {lost:,} of them do not fit (room for {room:,}): recovery refuses without --force; "
                 f"`ctscope resize {pin} --delta --yes` finishes the migration instead")
    return what + ", then " + back


def _carry_selection(pin: Path, cur: LiveMap, oldm: LiveMap):
    """(entries of `cur` to write into `oldm`, free room in `oldm`, the rule in words, `oldm`'s snapshot)."""
    old = old_pin(pin)
    po, pc = oldm.params, cur.params
    if (po["key_size"], po["value_size"]) != (pc["key_size"], pc["value_size"]):
        raise BadArgument(f"{pin.name} ({pc['key_size']}/{pc['value_size']} bytes) and {old.name} ({po['key_size']}/"
                          f"{po['value_size']}) are not a resize pair; refusing to put {old.name} back over it")
    ct = is_ct_layout(po)
    rule = (f"CT last_seen: an entry of {pin.name} is carried when {old.name} lacks its key or holds it with an older "
            "last_seen" if ct else
            f"an entry of {pin.name} is carried when {old.name} lacks its key (not a Calico CT layout: no last_seen "
            "to compare)")
    old_snap = oldm.snapshot()
    add, update, kept = cur.snapshot().fresher_than(old_snap, by_last_seen=ct)
    return _Fresher(add, update, kept), max(0, capacity(po) - old_snap.count), rule, old_snap


def _carry_back(pin: Path, cur: LiveMap, oldm: LiveMap, *, force: bool) -> list[str]:
    """Before `<pin>` (map `cur`) is discarded for `<pin>_old` (map `oldm`): write into the old
    map the entries of the new one it lacks, or (CT layouts) holds with an older last_seen."""
    old = old_pin(pin)
    po = oldm.params
    ct = is_ct_layout(po)
    sel, room, rule, old_snap = _carry_selection(pin, cur, oldm)
    if not sel.count:
        return [f"{pin.name} (map id {cur.id}) holds nothing {old.name} lacks: nothing to carry back (rule: {rule})"]
    lost = max(0, sel.add.count - room)
    if lost and not force:
        lru = po["map_type"] == "lru_hash"
        raise BadArgument(
            f"{pin}: putting {old.name} back would lose {lost:,} of the {sel.add.count:,} entries written to "
            f"{pin.name} (map id {cur.id}) that {old.name} lacks: {old.name} (map id {oldm.id}, max_entries "
            f"{po['max_entries']:,}, {old_snap.count:,} entries) has room for {room:,}"
            + (" (an LRU map evicts before it is full)" if lru else "")
            + f"; finish the migration instead (keeps {pin.name}): ctscope resize {pin} --delta --yes; or lose them: "
            f"ctscope resize {pin} --recover --force --yes")
    dst = LiveMap(str(old), writable=True)
    batches = [sel.update, sel.add.newest(sel.add.count - lost)]  # add is newest first: --force keeps those
    written = added = updated = 0
    for b in batches:
        if not b.count:
            continue
        try:
            # Decided per key when written: a program still using the old map may have made
            # an entry newer since the selection.
            w = dst.write_fresher(b, by_last_seen=ct)
            added, updated = added + w["added"], updated + w["updated"]
            written = added + updated
        except CtscopeError as e:
            raise CtscopeError(f"{pin}: carrying {pin.name}'s entries into {old.name} failed ({e}); nothing was "
                               f"repinned, {pin.name} still holds them all; finish the migration instead: "
                               f"ctscope resize {pin} --delta --yes") from None
        check = dst.lookup_compare(b, newer_ok=ct)
        if check["missing"] or check["different"]:
            raise CtscopeError(f"{pin}: carrying {pin.name}'s entries into {old.name}: {check['missing'] + check['different']:,}"
                               f" of {b.count:,} written are missing or different on reading back; nothing was repinned, "
                               f"{pin.name} still holds them all")
    evicted = oldm.lookup_compare(old_snap, newer_ok=ct)["missing"]
    if evicted and not force:
        raise CtscopeError(f"{pin}: after carrying {written:,} entries into {old.name} it lacks {evicted:,} of its own "
                           f"(evicted?); nothing was repinned, {pin.name} still holds everything; finish the migration "
                           f"instead: ctscope resize {pin} --delta --yes")
    out = [f"carried and verified {written:,} entries of {pin.name} (map id {cur.id}) into {old.name} (map id "
           f"{oldm.id}) before discarding {pin.name}: {added:,} new keys, "
           f"{updated:,} newer values (rule: {rule}"
           + (f"; {sel.kept:,} entries newer or as new in {old.name} kept" if sel.kept else "") + ")"]
    if lost or evicted:
        out.append(f"--force: {lost:,} entries of {pin.name} did not fit {old.name} and are lost"
                   + (f"; {evicted:,} entries of {old.name} were evicted" if evicted else ""))
    return out


def _prog_list(progs: list[dict[str, Any]]) -> str:
    return ", ".join(f"prog {p['id']} {p['name'] or '(no name)'}" for p in progs)


def _holder_list(holders: list[dict[str, Any]]) -> str:
    return ", ".join(f"pid {h['pid']} ({h['comm'] or '?'}, fd {','.join(map(str, h['fds']))})" for h in holders)


def check_layout(pin: Path, params: dict[str, Any]) -> None:
    """Resize changes max_entries only: the map must have exactly its Calico version's
    type, sizes and flags (anything else is a version change, which resize refuses)."""
    ver, fam = params.get("version"), params.get("family")
    lay = LAYOUTS.get((ver, fam)) if ver and fam else None
    named = ct_pin_version(pin.name)
    if lay is not None and named and named != (ver, fam):
        raise BadArgument(
            f"{pin}: refusing to resize: the pin is named for ct{named[0]} but holds map {params['name']!r} "
            f"({looks_like(params)}); the loader expects ct{named[0]}'s parameters here, which a resize does not "
            "give. Run `ctscope check` for the remedy.")
    if lay is None:
        raise NotACtMap(f"{pin}: {params['map_type']} map {params['name']!r} with {params['key_size']}/"
                        f"{params['value_size']}-byte entries is not a Calico CT map; resize only handles those")
    diffs = [f"{k} {params[k]!r} (ct{ver} has {v!r})" for k, v in lay.items() if params[k] != v]
    if diffs:
        raise BadArgument(
            f"{pin}: refusing to resize: {', '.join(diffs)}. The pin has the parameters of {looks_like(params)}, "
            f"not of ct{ver} ({RELEASES[ver]}): that is a map-version change, which keeps neither type nor flags. "
            "Run `ctscope check` for the remedy.")


def keep_when_forced(params: dict[str, Any], max_entries: int) -> int:
    """How many entries --force keeps: all slots of a HASH map; an LRU map evicts before it
    is full (per-CPU free lists, facts §8), so leave it that slack."""
    if params["map_type"] != "lru_hash":
        return max_entries
    from ctscope.check import possible_cpus

    return max(1, max_entries - min(max_entries // 10, possible_cpus() * 256))


PARTIAL_RE = re.compile(r"^\.(?P<file>.+)\.(?P<pid>\d+)\.partial$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_partial_backups(bpath: Path, map_name: str) -> list[tuple[Path, int]]:
    """Partial backup files (`.<backup>.<pid>.partial`, written before the rename into place)
    of this map in the backup's directory whose writer is gone: left by a kill during the
    backup. Those of a live pid (a concurrent run) are not touched."""
    directory = bpath.parent
    default = re.compile(rf"^ctscope-backup-{re.escape(map_name)}-\d{{8}}T\d{{6}}Z(-\d+)?\.arrow$")
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in sorted(names):
        m = PARTIAL_RE.match(name)
        if not m or not (m["file"] == bpath.name or default.match(m["file"])):
            continue
        pid = int(m["pid"])
        path = directory / name
        if pid != os.getpid() and not _pid_alive(pid) and path.is_file() and not path.is_symlink():
            out.append((path, pid))
    return out


def default_backup_path(name: str, directory: str | os.PathLike[str] = ".") -> Path:
    """The default backup name (a free one when planned; the write claims the first free
    `-N` of it atomically, so two runs in the same second get two files)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = Path(directory) / f"ctscope-backup-{name}-{stamp}.arrow"
    n = 1
    while os.path.lexists(path):  # a rerun within the same second: backups are never overwritten
        n += 1
        path = Path(directory) / f"ctscope-backup-{name}-{stamp}-{n}.arrow"
    return path


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


@dataclass
class _Fresher:
    """Entries of a source map to write into a destination so that it loses nothing fresher
    (Snapshot.fresher_than): keys it lacks (newest first), keys it holds with an older
    last_seen, and how many differing keys it keeps."""
    add: Any
    update: Any
    kept: int = 0

    @property
    def count(self) -> int:
        return self.add.count + self.update.count


LRU_HEADROOM = 1.25  # max_entries suggested for an LRU map per entry it must hold


def capacity(params: dict[str, Any]) -> int:
    """Entries a map holds without refusing (HASH) or evicting (LRU)."""
    return keep_when_forced(params, params["max_entries"])


@dataclass
class Result:
    pin: str
    done: bool = False
    plan: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    backup: str | None = None
    removed_partials: list[str] = field(default_factory=list)
    rule: str | None = None
    entries: int = 0
    copied: int = 0
    delta: int = 0
    dropped: int = 0
    old_id: int | None = None
    new_id: int | None = None
    programs: list[dict[str, Any]] = field(default_factory=list)
    holders: list[dict[str, Any]] = field(default_factory=list)
    kept_newer: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Timer:
    def __init__(self, res: Result):
        self.res, self.t = res, time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.res.timings[phase] = round(now - self.t, 4)
        self.t = now
        crash_point(phase)


def resize(pin: str | os.PathLike[str], max_entries: int, *, backup: str | None = None, keep_old: bool = False,
           force: bool = False, yes: bool = False, wait: float = 0.0, say: Say = print) -> Result:
    """Resize `pin` to `max_entries`. Without `yes` it only prints the plan. With `yes` it
    holds the pin's write lock for the whole run (LockBusy after `wait` seconds)."""
    if max_entries <= 0 or max_entries > 0xFFFFFFFF:
        raise BadArgument(f"--max-entries {max_entries}: expected 1 .. 4294967295")
    pin = canonical_pin(pin)
    with _locked(pin, "resize", yes, wait):
        return _resize(pin, max_entries, backup=backup, keep_old=keep_old, force=force, yes=yes, say=say)


def _resize(pin: Path, max_entries: int, *, backup: str | None, keep_old: bool, force: bool, yes: bool,
            say: Say) -> Result:
    res = Result(pin=str(pin))
    timer = _Timer(res)
    old = old_pin(pin)
    pending = needs_recovery(pin)
    if pending and not yes:
        res.plan.append(f"recover first: {old.name} exists (interrupted migration): " + recovery_plan(pin) + ", then resize")
        if not os.path.lexists(pin):
            return _show_plan(res, say)
    if not os.path.lexists(pin) and not pending:
        raise PinNotFound(f"{pin}: no such pin")
    # Refused before anything changes (recovery included): a backup that cannot be written.
    bpath = Path(backup) if backup else None
    if bpath is not None:
        check_backup_target(bpath, explicit=True)
    if pending and yes:
        res.recovered = recover(pin, say, force=force)
    if not os.path.lexists(pin):
        raise PinNotFound(f"{pin}: no such pin")

    live = LiveMap(str(pin))
    params = live.params
    check_layout(pin, params)
    res.old_id = live.id
    if params["max_entries"] == max_entries and not (pending and not yes):
        say(f"{pin}: max_entries is already {max_entries:,}: nothing to do")
        res.done = True
        return res
    # With --yes the snapshot taken for the backup gives the count: no extra pass over the map.
    snap = live.snapshot() if yes else None
    n = snap.count if snap is not None else raw_read(str(pin), 16384, "auto")[0]
    res.entries = n
    keep = keep_when_forced(params, max_entries)
    if n > max_entries and not force:
        raise BadArgument(
            f"{pin}: holds {n:,} entries, more than --max-entries {max_entries:,}: an LRU map would evict and a HASH "
            "map would refuse the rest; use --force to keep the newest by last_seen (the backup keeps them all)")
    res.programs = programs_using_map(live.id)
    res.holders = map_holders(live.id)
    if bpath is None:
        bpath = default_backup_path(params["name"])
        check_backup_target(bpath, explicit=False)
    res.backup = str(bpath)
    stale = stale_partial_backups(bpath, params["name"])
    if stale:
        res.plan.append(f"remove {len(stale)} partial backup file(s) of {params['name']} in {bpath.parent} left by a "
                        f"killed run: {', '.join(f'{q.name} (pid {pid} gone)' for q, pid in stale)}")
    if n > max_entries:
        lru = params["map_type"] == "lru_hash"
        copy_desc = (f"copy at most {max_entries:,} of {n:,} entries with BPF_MAP_UPDATE_BATCH: --force keeps the newest "
                     + (f"{keep:,} by last_seen (an LRU map evicts before it is full) and drops at least "
                        f"{n - keep:,}" if lru else f"{max_entries:,} by last_seen and drops {n - max_entries:,}")
                     + " (the backup keeps them all)")
    else:
        copy_desc = f"copy {n:,} entries with BPF_MAP_UPDATE_BATCH"
    res.plan += [
        f"map {params['name']} id {live.id}: {params['map_type']}, {params['key_size']}/{params['value_size']} bytes, "
        f"flags {params['map_flags']:#x}, {n:,} entries, max_entries {params['max_entries']:,} -> {max_entries:,}",
        f"backup every entry to {bpath}",
        f"create {params['name']} with max_entries {max_entries:,} (same type, sizes, flags), {copy_desc}",
        "verify the new map holds exactly the copied key->value set",
        f"pin the live map also at {old.name}, then swap the new map in at {pin.name} by an atomic rename",
        f"copy the entries changed in the old map meanwhile, except where the new map already holds the key with a "
        f"newer or equal last_seen (a writer that reopened the pin), then {'keep' if keep_old else 'remove'} {old.name}",
    ]
    if res.programs:
        res.plan.append(f"{_prog_list(res.programs)}: loaded program(s) referencing the current map (id {live.id}); "
                        "they keep using it until reloaded, so entries they write after the swap stay in the old map")
    if res.holders:
        res.plan.append(f"{_holder_list(res.holders)}: process(es) holding the current map (id {live.id}) open; "
                        + _holder_fate(keep_old, old.name, pin, "writes after the delta snapshot"))
    if n <= max_entries and n > keep:
        res.plan.append("note: an LRU map evicts before it is full: this copy may lose entries, in which case "
                        "verification fails and nothing is repinned; choose a larger --max-entries")
    if not yes:
        return _show_plan(res, say)

    timer.mark("plan")
    for q, pid in stale:
        try:
            os.unlink(q)
        except FileNotFoundError:
            continue
        res.removed_partials.append(str(q))
        say(f"removed {q}: a partial backup left by a killed run (pid {pid} is gone)")
    # The final name is claimed atomically: an explicit one that appeared meanwhile is
    # refused, a default one taken by a concurrent run gets the next number.
    bpath = Path(snap.write_new(str(bpath), numbered=backup is None))
    res.backup = str(bpath)
    say(f"backup: {snap.count:,} entries -> {bpath}")
    timer.mark("backup")

    to_copy = snap if snap.count <= max_entries else snap.newest(keep)
    res.dropped = snap.count - to_copy.count
    new = live.create_twin(max_entries)
    res.new_id = new.id
    timer.mark("create")
    res.copied = new.fill(to_copy)
    timer.mark("copy")
    cmp = to_copy.compare(new.snapshot())
    if not cmp["identical"]:
        raise CtscopeError(
            f"{pin}: verification failed: the new map lacks {cmp['missing']:,}, differs on {cmp['different']:,} and has "
            f"{cmp['extra']:,} unexpected of {cmp['expected']:,} entries (LRU eviction near max_entries?); "
            "nothing was repinned, the live map is untouched")
    say(f"copied and verified {cmp['equal']:,} entries (key and value bytes) in new map id {new.id}")
    timer.mark("verify")

    live.pin_at(str(old))
    timer.mark("pin-old")
    swap = swap_pin_name(str(pin))
    new.pin_at(swap)
    timer.mark("pin-new")
    rename_pin(swap, str(pin))
    say(f"swapped: {pin.name} is now map id {new.id} (max_entries {max_entries:,}); old map id {live.id} at {old.name}")
    timer.mark("swap")

    # Programs still write to the old map until reloaded: carry over what changed since
    # the snapshot (Felix's delta copy) by the freshness rule, decided per key when written:
    # a writer that reopened the pin may already have put a newer value into the new map.
    current = live.snapshot()
    changed = current.changed_since(snap)
    if force and res.dropped:
        changed = changed.newest(max(0, keep - to_copy.count))
    ct = is_ct_layout(params)
    w = new.write_fresher(changed, by_last_seen=ct, overwrite_differing=True) if changed.count else {}
    res.delta = w.get("added", 0) + w.get("updated", 0)
    res.kept_newer = w.get("kept", 0)
    # Everything else was verified byte for byte above; check what the delta wrote, by the
    # same rule: an entry the new map holds with a newer or equal last_seen is fine.
    final = new.lookup_compare(changed, newer_ok=ct)
    if final["missing"] or final["different"]:
        raise CtscopeError(
            f"{pin}: after the delta copy the new map lacks {final['missing']:,} and holds older values for "
            f"{final['different']:,} of {changed.count:,} entries changed in the old map; {old.name} is kept: rerun "
            f"`ctscope resize {pin} --delta --backup {bpath} --yes`")
    if changed.count:
        say(f"delta: copied and verified {res.delta:,} entries changed in the old map during the resize"
            + (f"; {res.kept_newer:,} the new map already held with a newer or equal last_seen (written there "
               "since the swap) kept" if res.kept_newer else "")
            + (" (rule: newer last_seen wins)" if ct else " (rule: value differs)"))
    if res.dropped:
        # Report what the new map really holds: an LRU map keeps fewer than max_entries.
        kept = current.compare(new.snapshot())
        res.copied = kept["equal"] + kept["different"]
        res.dropped = kept["missing"]
        say(f"--force: the new map holds {res.copied:,} of the {current.count:,} entries of the old map (the newest by "
            f"last_seen); {res.dropped:,} were dropped (all {snap.count:,} of the first copy are in {bpath})")
    if current.count < snap.count:
        res.notes.append(f"{snap.count - current.count:,} entries deleted from the old map meanwhile (expired) "
                         "remain in the new one")
    timer.mark("delta")

    if keep_old:
        res.notes.append(
            f"{old.name} kept. Felix treats an existing {old.name} as an interrupted migration and puts it back on "
            f"restart; after reloading the programs run `ctscope resize {pin} --delta --backup {bpath} --yes` to copy "
            "what they wrote to the old map and remove it")
    else:
        os.unlink(old)
        res.notes.append(f"removed {old.name}; the old map is freed once no program references it")
    timer.mark("remove-old")
    if res.programs:
        res.notes.append(f"{_prog_list(res.programs)} still use the old map id {live.id} until reloaded (e.g. "
                         "restart calico-node); entries they write meanwhile are not in the new map")
    holders = map_holders(live.id)
    if holders:
        res.notes.append(f"{_holder_list(holders)} still hold the old map id {live.id} open: "
                         + _holder_fate(keep_old, old.name, pin, "wrote after the delta snapshot or writes from now on"))
    res.done = True
    for line in res.notes:
        say(line)
    return res


def _holder_fate(keep_old: bool, old_name: str, pin: Path, what: str) -> str:
    """What happens to what a process holding the old map's fd writes (said plainly)."""
    return (f"a process writes to the map its fd names, whatever is pinned, so what it {what} goes to the old map, "
            "not the new one: " + (f"a later `ctscope resize {pin} --delta --yes` copies it while {old_name} is kept "
                                   "(restart or reopen the process first)" if keep_old else
                                   "it is lost (restart the process, or use --keep-old and a later --delta)"))


def _show_plan(res: Result, say: Say) -> Result:
    say("plan (nothing done; add --yes to run it):")
    for i, line in enumerate(res.plan, 1):
        say(f"  {i}. {line}")
    return res


def finish_delta(pin: str | os.PathLike[str], *, backup: str | None = None, keep_old: bool = False, yes: bool = False,
                 wait: float = 0.0, say: Say = print) -> Result:
    """`--delta`: copy into `<pin>` the entries of `<pin>_old` that changed since the first
    copy (the backup, when given) or that `<pin>` lacks or holds with an older last_seen
    (CT layouts; for other maps every entry whose value differs, as Felix does), then remove
    `<pin>_old` unless `keep_old`. With `yes`, under the pin's write lock."""
    pin = canonical_pin(pin)
    with _locked(pin, "resize --delta", yes, wait):
        return _finish_delta(pin, backup=backup, keep_old=keep_old, yes=yes, say=say)


def _finish_delta(pin: Path, *, backup: str | None, keep_old: bool, yes: bool, say: Say) -> Result:
    old = old_pin(pin)
    res = Result(pin=str(pin))
    if not os.path.lexists(old):
        raise PinNotFound(f"{old}: no such pin; --delta copies from the {old.name} a `resize --keep-old` left")
    oldm, newm = LiveMap(str(old)), LiveMap(str(pin), writable=True)
    po, pn = oldm.params, newm.params
    if oldm.id == newm.id:
        raise BadArgument(f"{pin} and {old.name} are the same map (id {oldm.id}): nothing to copy; "
                          f"`ctscope resize {pin} --recover --yes` removes the extra pin")
    for k in ("map_type", "key_size", "value_size", "map_flags"):
        if po[k] != pn[k]:
            raise BadArgument(f"{old.name} and {pin.name} differ in {k} ({po[k]!r} vs {pn[k]!r}): not a resize pair")
    res.old_id, res.new_id = oldm.id, newm.id
    ct = is_ct_layout(po)
    if backup:
        base = read_backup(backup)
        if base.source["id"] != oldm.id:
            raise BadArgument(f"{backup}: was taken from map id {base.source['id']}, but {old.name} is map id {oldm.id}")
        res.rule = f"changed in {old.name} since the backup {backup}"
    elif ct:
        res.rule = (f"CT last_seen: an entry of {old.name} is copied when {pin.name} lacks its key or holds it with an "
                    "older last_seen")
    else:
        res.rule = (f"value differs from {pin.name}'s (Felix's delta copy; not a Calico CT layout, so no last_seen to "
                    "compare)")
    if backup and ct:
        res.rule += (f"; an entry {pin.name} holds with a newer or equal last_seen is kept")
    res.plan = [f"copy into {pin.name} (map id {newm.id}) the entries of {old.name} (map id {oldm.id}) by the rule: "
                f"{res.rule}", f"{'keep' if keep_old else 'remove'} {old.name}"]
    progs = programs_using_map(oldm.id)
    res.programs = progs
    if progs:
        res.plan.append(f"{_prog_list(progs)} still use {old.name}: reload them first, or their later writes are lost")
    res.holders = map_holders(oldm.id)
    if res.holders:
        res.plan.append(f"{_holder_list(res.holders)} hold {old.name} (map id {oldm.id}) open: what they write after "
                        "this copy goes to the old map and is lost; restart or reopen them first")
    if not yes:
        return _show_plan(res, say)
    cur = oldm.snapshot()
    if backup:
        batches, kept = [cur.changed_since(base)], 0
    else:
        # Chosen from a snapshot of <pin>, then decided again per key when written.
        add, update, kept = cur.fresher_than(newm.snapshot(), by_last_seen=ct, overwrite_differing=not ct)
        batches = [update, add]
    res.delta = total = bad = 0
    for b in batches:
        if not b.count:
            continue
        # Fresher wins: a value written to the new map after the resize is not replaced by
        # the old map's older one (Felix's rule, value differs, would replace it).
        w = newm.write_fresher(b, by_last_seen=ct, overwrite_differing=True)
        res.delta += w["added"] + w["updated"]
        kept += w["kept"]
        check = newm.lookup_compare(b, newer_ok=ct)
        total, bad = total + b.count, bad + check["missing"] + check["different"]
    res.kept_newer = kept
    if bad:
        raise CtscopeError(f"{pin}: delta verification failed: {bad:,} missing or different of {total:,} copied; "
                           f"{old.name} kept")
    say(f"delta: copied and verified {res.delta:,} entries from {old.name} into {pin.name} (rule: {res.rule}"
        + (f"; {kept:,} entries newer or as new in {pin.name} kept" if kept else "") + ")")
    crash_point("delta")
    if not keep_old:
        os.unlink(old)
        say(f"removed {old.name}")
    res.done = True
    return res


def restore(pin: str | os.PathLike[str], source: str, *, yes: bool = False, overwrite: bool = False,
            force: bool = False, wait: float = 0.0, say: Say = print) -> Result:
    """Write a backup's entries (resize, delete, clean, flush) back into `pin`, under the
    pin's write lock. Keys the map lacks are inserted with BPF_NOEXIST (an entry a program
    creates meanwhile wins); keys it holds are replaced only when the backup's last_seen is
    newer (CT maps), or with `overwrite`. No entry is deleted. Refuses (BadArgument) a
    backup of another CT version or ct3 layout, or of another map type, or a target that is
    not a Calico CT map, unless `force`: auto-detection would then misread the map."""
    from contextlib import nullcontext

    from ctscope._native import detect_ct, insert_new, snapshot_rows
    from ctscope.pinlock import pin_lock

    pin = canonical_pin(pin)
    res = Result(pin=str(pin), backup=source)
    snap = read_backup(source)
    if not os.path.lexists(pin):
        raise PinNotFound(f"{pin}: no such pin")
    from ctscope.act import map_lock

    with pin_lock(pin, "restore", wait=wait) if yes else nullcontext(), \
            map_lock(pin, "restore", wait=wait) if yes else nullcontext():
        target = LiveMap(str(pin), writable=yes)
        p, s = target.params, snap.source
        if (p["key_size"], p["value_size"]) != (s["key_size"], s["value_size"]):
            raise BadArgument(f"{source}: holds {s['key_size']}/{s['value_size']}-byte entries of {s['name']}, but {pin} "
                              f"has {p['key_size']}/{p['value_size']}: not the same layout")
        held = target.snapshot()
        bver, _bfam = detect_ct(s["name"], s["pin"], s["map_type_id"], s["key_size"], s["value_size"])
        ct = is_ct_layout(p)
        why = []
        named = ct_pin_version(pin.name) or ct_pin_version(p["name"])
        if not ct or not named:
            why.append(f"{pin} ({p['map_type']} {p['name']!r}, {p['key_size']}/{p['value_size']} bytes) is not a Calico "
                       "CT map (" + ("its sizes fit no CT layout" if not ct else "neither it nor its pin has a Calico CT "
                                     "map name") + "), so its entries are not CT entries to put back")
        elif bver != p["version"]:
            why.append(f"the backup holds ct{bver} entries of {s['name']!r} but {pin.name} is a ct{p['version']} map "
                       f"({p['name']!r}): afterwards auto-detection and Calico would read its entries with the wrong "
                       "layout")
        elif bver == 3 and snap.count and held.count:
            blay, tlay = snapshot_rows(snap)[1], snapshot_rows(held)[1]
            if blay != tlay:
                why.append(f"the backup's ct3 entries look like layout {blay} but {pin.name}'s look like {tlay} "
                           "(value offset 0 means `created` up to Calico 3.29, `rst_seen` from 3.30): mixing them "
                           "makes the map's layout undecidable")
        if ct and (p["map_type"], p["map_flags"]) != (s["map_type"], s["map_flags"]):
            why.append(f"the backup came from a {s['map_type']} map with flags {s['map_flags']:#x}, {pin.name} is "
                       f"{p['map_type']} with flags {p['map_flags']:#x}: a map-version change")
        if why and not force:
            raise BadArgument(f"{source}: refusing to restore into {pin}: " + "; ".join(why) + " (--force writes anyway)")
        if overwrite:
            add, update, kept = snap.fresher_than(held, by_last_seen=False, overwrite_differing=True)
            rule = "keys the map holds take the backup's value (--overwrite)"
        else:
            add, update, kept = snap.fresher_than(held, by_last_seen=ct)
            rule = ("keys the map holds are replaced only by a newer last_seen from the backup" if ct else
                    "keys the map holds are kept (not a CT map: no last_seen; --overwrite replaces them)")
        # The map keeps its other entries: those and the new keys must fit, and an LRU map
        # evicts before it is full (facts §8), so it needs headroom, not just max_entries.
        same = snap.count - add.count - update.count - kept  # already in the map, byte for byte
        union = held.count + add.count
        lru = p["map_type"] == "lru_hash"
        if union > capacity(p):
            need = math.ceil(union * LRU_HEADROOM) if lru else union
            raise BadArgument(
                f"{source}: {add.count:,} new entries and the {held.count:,} entries {pin.name} holds do not fit {pin} "
                f"({p['map_type']}, max_entries {p['max_entries']:,}"
                + (f"; an LRU map evicts before it is full, so {need:,} leaves {LRU_HEADROOM - 1:.0%} headroom" if lru
                   else "") + f"); resize it first: ctscope resize {pin} --max-entries {need} --yes")
        res.entries = snap.count
        res.rule = rule
        res.plan = [f"write {add.count + update.count:,} of the {snap.count:,} entries of {s['name']} (map id {s['id']}, "
                    f"backup CRC ok) into {pin} (map id {target.id}: {held.count:,} entries, max_entries "
                    f"{p['max_entries']:,}): {add.count:,} keys it lacks (BPF_NOEXIST), {update.count:,} it holds older",
                    f"{rule}; {kept:,} entries of the map are newer or as new and stay, {same:,} are already identical; "
                    "no entry is deleted"]
        for w in why:
            res.plan.append(f"--force: {w}")
        if not yes:
            return _show_plan(res, say)
        replaced = target.write(update) if update.count else 0
        written, created = insert_new(target, add) if add.count else (0, 0)
        res.copied = replaced + written
        bad = 0
        for b in (update, add):
            if b.count:
                c = target.lookup_compare(b, newer_ok=ct)
                bad += c["missing"] + c["different"]
        if bad:
            raise CtscopeError(f"{pin}: after restore {bad:,} of the {add.count + update.count:,} entries written are "
                               "missing or differ (evicted by LRU, or rewritten by a live program)")
        say(f"restored and verified {res.copied:,} entries from {source} into {pin}: {written:,} new keys, {replaced:,} "
            f"older entries replaced; kept {kept + created:,} the map holds as new or newer, {same:,} already identical"
            + (f" ({created:,} created while restoring)" if created else "") + f" (rule: {rule})")
    res.done = True
    return res
