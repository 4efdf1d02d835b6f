"""How full a CT map is, judged one way by every command (stats, maps, check, report).

Two readings of one map:

* **now**: entries / max_entries. A full LRU map (ct4) evicts its least recently used entry
  for every new connection, live connections included; a full HASH map (ct2, ct3) refuses
  new entries. Above `GROW_AT` the map is flagged `high`, at 100 % `full`.
* **after Felix's next sweep** (expired entries deleted): what Felix's DoubleIfFull auto-grow
  judges (felix/bpf/conntrack/scanner.go): more than `GROW_AT` live -> it grows the map;
  more than `GROW_SUSTAINED_AT` for 3 sweeps in a row -> it grows.

A dump is not atomic. A walk over a map that changes under it can read more distinct keys
than the map can hold (keys inserted ahead of the cursor while keys behind it are evicted).
Such a count is not the map's state: the ratio is capped at 1.0 and `seen_over` says the
walk saw more than the map holds ("≥100%", seen during a changing walk).
"""

from __future__ import annotations

from dataclasses import dataclass

# Felix's DoubleIfFull thresholds (scanner.go: `s.higherCount >= 3 && full > 0.85 || full > 0.90`).
GROW_AT = 0.90
GROW_SUSTAINED_AT = 0.85


def level(ratio: float | None) -> int | None:
    """0 up to GROW_SUSTAINED_AT, 1 up to GROW_AT, 2 above it (None: unknown). The one place
    the thresholds are compared."""
    if ratio is None:
        return None
    return 2 if ratio > GROW_AT else 1 if ratio > GROW_SUSTAINED_AT else 0


def sweep_verdict(ratio: float | None) -> str:
    """Felix's auto-grow verdict on the fill left after its sweep: ok | warning | grow."""
    lv = level(ratio)
    return "unknown" if lv is None else ("ok", "warning", "grow")[lv]


@dataclass(frozen=True)
class Fill:
    entries: int
    max_entries: int
    ratio: float | None  # entries / max_entries, capped at 1.0 (None: max_entries unknown)
    seen_over: bool  # the walk read more entries than the map can hold: it changed under the walk

    @property
    def verdict(self) -> str:
        """The fill now: ok | warning | high | full (unknown without max_entries)."""
        if self.ratio is None:
            return "unknown"
        if self.seen_over or self.entries >= self.max_entries:
            return "full"
        return ("ok", "warning", "high")[level(self.ratio)]

    def text(self) -> str:
        """`97.7%`, or `≥100%` when the walk read more entries than the map can hold (`n/a` without
        max_entries). The one spelling of a fill: every table, text and chart prints this."""
        if self.ratio is None:
            return "n/a"
        return "≥100%" if self.seen_over else f"{self.ratio:.1%}"

    def seen(self) -> str:
        """Why a fill reads `≥100%` (empty otherwise)."""
        if not self.seen_over:
            return ""
        return (f"{self.entries:,} entries read, more than max_entries {self.max_entries:,}: the map changed "
                "during the walk")

    def warning(self) -> str | None:
        """One sentence for a map at `high` or `full`, None otherwise."""
        v = self.verdict
        if v not in ("high", "full"):
            return None
        what = f"full now ({self.seen()})" if self.seen_over else (
            f"{self.text()} full now ({self.entries:,} of {self.max_entries:,})")
        return (f"the map is {what}: a full LRU map (ct4) evicts live connections for each new one, a full hash "
                "map (ct2/ct3) refuses new connections")

    def as_dict(self) -> dict:
        return {"fill_ratio": self.ratio, "fill_now": self.verdict, "fill_seen_over_max": self.seen_over}


def judge(entries: int, max_entries: int | None) -> Fill:
    if not max_entries or max_entries <= 0:
        return Fill(entries, max_entries or 0, None, False)
    over = entries > max_entries
    return Fill(entries, max_entries, min(entries / max_entries, 1.0), over)


def worst(*verdicts: str) -> str:
    """The most alarming of several verdicts (for one colour: the report's gauge)."""
    order = ["unknown", "ok", "warning", "high", "grow", "full"]
    return max(verdicts, key=lambda v: order.index(v) if v in order else 0)
