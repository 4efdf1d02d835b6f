"""Recovering an interrupted migration: Felix's rule (`PinnedMap.EnsureExists`), made safe
for what was written to `<pin>` since the swap.

If `<pin>_old` exists the migration was interrupted, so `<pin>_old` goes back to `<pin>`
(here by one atomic rename) and the stale swap pin is removed. When `<pin>` already holds
the new map (killed after the swap, or `--keep-old`), entries written to it since are first
carried into `<pin>_old` (those it lacks, or holds with an older last_seen), so putting
`<pin>_old` back loses none; if they do not fit, recovery refuses unless forced.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctscope._native import LiveMap, map_holders, programs_using_map, rename_pin, swap_pin_name
from ctscope.errors import BadArgument, CtscopeError, NotACtMap
from ctscope.repair.common import (Fresher, Say, capacity, holder_list, is_ct_layout, locked, old_pin,
                                   prog_list)


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
            users = programs_using_map(cur.id)
            if users:
                done.append(f"note: {prog_list(users)} use the discarded map id {cur_id}; they keep it until reloaded")
            holders = map_holders(cur.id)
            if holders:
                done.append(f"note: {holder_list(holders)} hold the discarded map id {cur_id} open; what they write "
                            "to it from now on is lost (restart them)")
        rename_pin(str(old), str(pin))
        what = ("was the same map" if cur_id == old_id else
                "was missing" if cur_id is None else f"held map id {cur_id}, now discarded")
        done.append(f"restored {old.name} (map id {old_id}) to {pin.name} ({pin.name} {what}): Felix's rule for an "
                    "interrupted migration")
    for line in done:
        say(line)
    return done


def recover_locked(pin: Path, say: Say, *, force: bool = False, wait: float = 0.0,
                   command: str = "resize --recover") -> list[str] | None:
    """`recover` under the pin's write lock; None when, once the lock is held, there is
    nothing to recover (another run finished meanwhile)."""
    with locked(pin, command, True, wait):
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
    return Fresher(add, update, kept), max(0, capacity(po) - old_snap.count), rule, old_snap


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
