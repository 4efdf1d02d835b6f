"""`resize --delta`: finish a migration `resize --keep-old` left, copying into `<pin>` what
changed in `<pin>_old` by the freshness rule, then removing `<pin>_old`."""

from __future__ import annotations

import os
from pathlib import Path

from ctscope._native import LiveMap, map_holders, programs_using_map, read_backup
from ctscope.errors import BadArgument, CtscopeError, PinNotFound
from ctscope.repair.common import (Result, Say, canonical_pin, crash_point, holder_list, is_ct_layout, locked,
                                   old_pin, prog_list, show_plan)


def finish_delta(pin: str | os.PathLike[str], *, backup: str | None = None, keep_old: bool = False, yes: bool = False,
                 wait: float = 0.0, say: Say = print) -> Result:
    """`--delta`: copy into `<pin>` the entries of `<pin>_old` that changed since the first
    copy (the backup, when given) or that `<pin>` lacks or holds with an older last_seen
    (CT layouts; for other maps every entry whose value differs, as Felix does), then remove
    `<pin>_old` unless `keep_old`. With `yes`, under the pin's write lock."""
    pin = canonical_pin(pin)
    with locked(pin, "resize --delta", yes, wait):
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
        res.plan.append(f"{prog_list(progs)} still use {old.name}: reload them first, or their later writes are lost")
    res.holders = map_holders(oldm.id)
    if res.holders:
        res.plan.append(f"{holder_list(res.holders)} hold {old.name} (map id {oldm.id}) open: what they write after "
                        "this copy goes to the old map and is lost; restart or reopen them first")
    if not yes:
        return show_plan(res, say)
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
