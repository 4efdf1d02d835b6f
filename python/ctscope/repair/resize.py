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

Recovery (repair/recover.py), --delta (repair/delta.py) and backups (repair/backups.py)
live beside this module.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ctscope._native import MAX_ENTRIES_LIMIT, LiveMap, map_holders, programs_using_map, raw_read, rename_pin, swap_pin_name
from ctscope.errors import BadArgument, CtscopeError, NotACtMap, PinNotFound
from ctscope.pins import ct_pin_version
from ctscope.repair.backups import check_backup_target, default_backup_path, stale_partial_backups
from ctscope.repair.check import LAYOUTS, RELEASES, looks_like
from ctscope.repair.common import (PHASES, Result, Say, canonical_pin, crash_point, holder_fate, holder_list,
                                   is_ct_layout, keep_when_forced, locked, old_pin, prog_list, show_plan)
from ctscope.repair.recover import needs_recovery, recover, recovery_plan

__all__ = ["PHASES", "Result", "check_layout", "resize"]


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
    if max_entries <= 0 or max_entries > MAX_ENTRIES_LIMIT:
        raise BadArgument(f"--max-entries {max_entries}: expected 1 .. {MAX_ENTRIES_LIMIT}")
    pin = canonical_pin(pin)
    with locked(pin, "resize", yes, wait):
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
            return show_plan(res, say)
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
        res.plan.append(f"{prog_list(res.programs)}: loaded program(s) referencing the current map (id {live.id}); "
                        "they keep using it until reloaded, so entries they write after the swap stay in the old map")
    if res.holders:
        res.plan.append(f"{holder_list(res.holders)}: process(es) holding the current map (id {live.id}) open; "
                        + holder_fate(keep_old, old.name, pin, "writes after the delta snapshot"))
    if n <= max_entries and n > keep:
        res.plan.append("note: an LRU map evicts before it is full: this copy may lose entries, in which case "
                        "verification fails and nothing is repinned; choose a larger --max-entries")
    if not yes:
        return show_plan(res, say)
    assert snap is not None  # taken above when acting

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
        res.notes.append(f"{prog_list(res.programs)} still use the old map id {live.id} until reloaded (e.g. "
                         "restart calico-node); entries they write meanwhile are not in the new map")
    holders = map_holders(live.id)
    if holders:
        res.notes.append(f"{holder_list(holders)} still hold the old map id {live.id} open: "
                         + holder_fate(keep_old, old.name, pin, "wrote after the delta snapshot or writes from now on"))
    res.done = True
    for line in res.notes:
        say(line)
    return res
