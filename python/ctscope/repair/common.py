"""What the repair commands (resize, --delta, --recover, restore) share: the pin's path
and its `<pin>_old`, the write lock, the crash test hooks, capacity rules and the Result."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctscope import _native
from ctscope.errors import BadArgument
from ctscope.felixconfig import possible_cpus
from ctscope.pinlock import write_lock

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
    symlinks (so no path component leads ctscope out of the bpffs). map.rs owns the rule."""
    return _native.canonical_pin(pin)


def old_pin(pin: Path) -> Path:
    """`<pin>_old`: where a migration keeps the live map (Felix's convention; migrate.rs)."""
    return _native.old_pin_path(pin)


def locked(pin: Path, command: str, act: bool, wait: float):
    """The write lock (pin, then its map) for an acting run (nothing for a plan, which changes nothing)."""
    if wait < 0:
        raise BadArgument(f"--wait {wait:g}: expected seconds >= 0")
    return write_lock(pin, command, wait=wait) if act else contextlib.nullcontext()


def prog_list(progs: list[dict[str, Any]]) -> str:
    return ", ".join(f"prog {p['id']} {p['name'] or '(no name)'}" for p in progs)


def holder_list(holders: list[dict[str, Any]]) -> str:
    return ", ".join(f"pid {h['pid']} ({h['comm'] or '?'}, fd {','.join(map(str, h['fds']))})" for h in holders)


def keep_when_forced(params: dict[str, Any], max_entries: int) -> int:
    """How many entries --force keeps: all slots of a HASH map; an LRU map evicts before it
    is full (per-CPU free lists, facts §8), so leave it that slack."""
    if params["map_type"] != "lru_hash":
        return max_entries
    return max(1, max_entries - min(max_entries // 10, possible_cpus() * 256))


@dataclass
class Fresher:
    """Entries of a source map to write into a destination so that it loses nothing fresher
    (MapEntries.fresher_than): keys it lacks (newest first), keys it holds with an older
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


def holder_fate(keep_old: bool, old_name: str, pin: Path, what: str) -> str:
    """What happens to what a process holding the old map's fd writes (said plainly)."""
    return (f"a process writes to the map its fd names, whatever is pinned, so what it {what} goes to the old map, "
            "not the new one: " + (f"a later `ctscope resize {pin} --delta --yes` copies it while {old_name} is kept "
                                   "(restart or reopen the process first)" if keep_old else
                                   "it is lost (restart the process, or use --keep-old and a later --delta)"))


def show_plan(res: Result, say: Say) -> Result:
    say("plan (nothing done; add --yes to run it):")
    for i, line in enumerate(res.plan, 1):
        say(f"  {i}. {line}")
    return res
