"""`ctscope restore`: write a backup's entries (resize, delete, clean, flush) back into a pin,
never replacing a newer entry and never deleting one."""

from __future__ import annotations

import math
import os
from contextlib import nullcontext

from ctscope._native import LiveMap, detect_ct, insert_new, read_backup, snapshot_rows
from ctscope.errors import BadArgument, CtscopeError, PinNotFound
from ctscope.pinlock import write_lock
from ctscope.pins import ct_pin_version
from ctscope.repair.common import LRU_HEADROOM, Result, Say, canonical_pin, capacity, is_ct_layout, show_plan


def restore(pin: str | os.PathLike[str], source: str, *, yes: bool = False, overwrite: bool = False,
            force: bool = False, wait: float = 0.0, say: Say = print) -> Result:
    """Write a backup's entries (resize, delete, clean, flush) back into `pin`, under the
    pin's write lock. Keys the map lacks are inserted with BPF_NOEXIST (an entry a program
    creates meanwhile wins); keys it holds are replaced only when the backup's last_seen is
    newer (CT maps), or with `overwrite`. No entry is deleted. Refuses (BadArgument) a
    backup of another CT version or ct3 layout, or of another map type, or a target that is
    not a Calico CT map, unless `force`: auto-detection would then misread the map."""
    pin = canonical_pin(pin)
    res = Result(pin=str(pin), backup=source)
    snap = read_backup(source)
    if not os.path.lexists(pin):
        raise PinNotFound(f"{pin}: no such pin")
    with write_lock(pin, "restore", wait=wait) if yes else nullcontext():
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
            return show_plan(res, say)
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
