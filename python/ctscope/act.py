"""Acting on the table: look one connection up (`get`), delete chosen entries (`delete`),
delete what Felix would expire (`clean`), delete everything (`flush`).

Rules shared by the three deleting commands (README "Acting on the table"):

* dry run unless `yes`; the per-pin lock for the whole run (`pinlock`, exit 5 when busy);
  pins outside a bpffs and symlinks refused (`repair.common.canonical_pin`);
* one scan (a raw snapshot of every entry), decoded in Rust, judged in polars;
* deleting one side of a NAT pair deletes the other;
* every entry to be removed is written to a backup (ctscope's CRC'd Arrow format, mode
  0600, fsynced and renamed into place) BEFORE the first delete, so a SIGKILL at any point
  loses nothing the backup does not hold; `ctscope restore` puts entries back;
* removal is Felix's rule (act.rs): an entry goes only if its last_seen is still the value
  the scan saw; NAT pairs together, and the fwd only while it still points at that rev;
* `max_delete` (default: the larger of 10,000 and 10 % of the entries scanned) refuses
  larger deletions unless `force` (flush is exempt: it is explicit).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ctscope import _native
from ctscope._native import LiveMap, monotonic_ns
from ctscope.errors import BadArgument, NotACtMap, PinNotFound
from ctscope.pinlock import ensure_private_dir, write_lock
from ctscope.repair.common import is_ct_layout
from ctscope.pins import DEFAULT_BPFFS, default_ct_pin

Say = Callable[[str], None]

BACKUP_DIR_ENV = "CTSCOPE_BACKUP_DIR"
DEFAULT_BACKUP_DIR = "/var/lib/ctscope/backups"
DEFAULT_MAX_FLOOR = 10_000
DEFAULT_MAX_FRACTION = 0.10
CRASH_ENV = "CTSCOPE_TEST_CRASH_AFTER"  # `backup`, or `delete:N` (after N deletions): SIGKILL, as resize's hook

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "icmp6": 58, "sctp": 132}


# --------------------------------------------------------------------------- get / lookup

def parse_proto(text: str) -> list[int] | None:
    """`tcp`/`udp`/`icmp`/`sctp`/a number 0-255; `any` is None (every common protocol)."""
    t = text.strip().lower()
    if t == "any":
        return None
    if t in PROTOCOLS:
        return [PROTOCOLS[t]]
    try:
        n = int(t, 0)
    except ValueError:
        n = -1
    if not 0 <= n <= 255:
        raise BadArgument(f"protocol {text!r}: expected tcp, udp, icmp, icmpv6, sctp, any or a number 0-255")
    return [n]


def parse_endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    """`10.0.0.1`, `10.0.0.1:443`, `fd00::1`, `[fd00::1]:443` -> (address, port or None)."""
    t = text.strip()
    host, port = t, None
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BadArgument(f"endpoint {text!r}: expected [IPv6]:PORT")
        port = rest[1:] or None
    elif t.count(":") == 1:
        host, port = t.split(":")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise BadArgument(f"endpoint {text!r}: expected an IPv4 or IPv6 address, optionally with :PORT "
                          "([addr]:PORT for IPv6)") from None
    p = None
    if port is not None:
        if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
            raise BadArgument(f"endpoint {text!r}: port {port!r} is not 0-65535")
        p = int(port)
    return addr, p


def tuple_keys(proto: str, src: str, dst: str) -> tuple[int, list[tuple[bytes, str]]]:
    """(family, [(key, how)]): Calico's ordered key for src -> dst, then the two literal
    orders where they differ from it (keys not written by Calico's datapath, or a
    protocol whose ports the datapath zeroes). `any` tries TCP, UDP, ICMP, SCTP."""
    (sa, sp), (da, dp) = parse_endpoint(src), parse_endpoint(dst)
    if sa.version != da.version:
        raise BadArgument(f"{src} and {dst}: one IPv4 and one IPv6 address; a connection has one family")
    fam = sa.version
    protos = parse_proto(proto) or [6, 17, 1 if fam == 4 else 58, 132]
    sp, dp = sp or 0, dp or 0
    out: list[tuple[bytes, str]] = []
    for pr in protos:
        variants = [(_native.build_key(fam, pr, sa.packed, sp, da.packed, dp, True), "key"),
                    (_native.build_key(fam, pr, sa.packed, sp, da.packed, dp, False), "key (src as A)"),
                    (_native.build_key(fam, pr, da.packed, dp, sa.packed, sp, False), "key (dst as A)")]
        for k, how in variants:
            if all(k != o for o, _ in out):
                out.append((k, how))
    return fam, out


def _pin_for(pin: str | os.PathLike[str] | None, bpffs: str, ipv6: bool) -> Path:
    return Path(pin) if pin else default_ct_pin(bpffs, ipv6)


def lookup(proto: str, src: str, dst: str, pin: str | os.PathLike[str] | None = None, *, layout: str = "auto",
           bpffs: str = DEFAULT_BPFFS, now_ns: int | None = None) -> pl.DataFrame:
    """The entries of one connection, looked up directly (O(1), read-only fd): Calico's
    ordered key (and the literal orders), plus the NAT rev entry a NAT fwd entry points at.
    Decoded as `dump` decodes them, with a `found_by` column first. Empty when none."""
    fam, keys = tuple_keys(proto, src, dst)
    path = _pin_for(pin, bpffs, fam == 6)
    rows, _layout, hows, _info = _native.lookup_keys(str(path), keys, layout, now_ns)
    df = pl.DataFrame(rows)
    return df.select(pl.Series("found_by", hows, dtype=pl.String), pl.all())


# --------------------------------------------------------------------------- backups

def backup_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """Where write commands keep their backups: `directory`, else $CTSCOPE_BACKUP_DIR, else
    /var/lib/ctscope/backups; created 0700; refused if it is a link, or another user's, or
    writable by others (a backup holds connection data)."""
    d = Path(directory or os.environ.get(BACKUP_DIR_ENV) or DEFAULT_BACKUP_DIR)
    ensure_private_dir(d, "backup directory")
    return d


def _safe_name(map_name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in map_name) or "map"


def new_backup_path(directory: Path, command: str, map_name: str) -> Path:
    from ctscope.repair.backups import free_backup_path

    return free_backup_path(directory, f"ctscope-{command}-{_safe_name(map_name)}")


def remove_stale_partials(directory: Path, map_name: str, say: Say) -> list[str]:
    """Remove the partial backups (`.<backup>.<pid>.partial`) of delete/clean/flush of this
    map that a kill during the backup left, once their pid is gone (as resize's rerun does
    for its own): they hold connection data and no run will ever finish them. Those of a
    live pid (a run in progress) are left alone."""
    import re

    from ctscope.repair.backups import STAMP_RE, stale_partials

    ours = re.compile(rf"^ctscope-(delete|clean|flush)-{re.escape(_safe_name(map_name))}-{STAMP_RE}\.arrow$")
    removed = []
    for q, pid in stale_partials(directory, lambda f: bool(ours.match(f))):
        try:
            os.unlink(q)
        except FileNotFoundError:
            continue
        removed.append(str(q))
        say(f"removed {q}: a partial backup left by a killed run (pid {pid} is gone)")
    return removed


def _crash_point(phase: str) -> None:
    from ctscope.repair.common import crash_point

    crash_point(phase)


HOLD_ENV = "CTSCOPE_TEST_HOLD_AFTER_BACKUP"
FALLBACK_ENV = "CTSCOPE_TEST_NO_LOOKUP_AND_DELETE"  # test hook: act as on a kernel without it (< 5.14)


def _hold_point() -> None:
    """Test hook: `CTSCOPE_TEST_HOLD_AFTER_BACKUP=<path>` creates `<path>.ready` once the
    backup is written and waits (at most 120 s) for `<path>.go`: the test then knows the
    writer it runs has changed entries between the scan and the deletes."""
    base = os.environ.get(HOLD_ENV)
    if not base:
        return
    Path(base + ".ready").touch()
    deadline = time.monotonic() + 120
    while not os.path.exists(base + ".go") and time.monotonic() < deadline:
        time.sleep(0.01)


def _crash_after_deletions() -> int | None:
    v = os.environ.get(CRASH_ENV, "")
    return int(v.split(":", 1)[1]) if v.startswith("delete:") else None


# --------------------------------------------------------------------------- delete / clean / flush

@dataclass
class ActResult:
    command: str
    pin: str
    dry_run: bool = True
    scanned: int = 0
    matched: int = 0
    nat_partners: int = 0
    to_delete: int = 0
    deleted: int = 0
    refreshed: int = 0
    gone: int = 0
    nat_pairs: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    backup: str | None = None
    seconds: float = 0.0
    rule: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        if self.dry_run:
            return (f"{self.command} (dry run, nothing changed; add --yes): scanned {self.scanned:,}, matched "
                    f"{self.matched:,}, would delete {self.to_delete:,}"
                    + (f" (incl. {self.nat_partners:,} NAT partner entries)" if self.nat_partners else "")
                    + f", {self.seconds:.2f} s")
        d = self.details
        extra = "".join([
            f", {d.get('fwd_kept_with_rev', 0):,} NAT fwd kept with their refreshed rev" if d.get("fwd_kept_with_rev") else "",
            f", {d.get('repointed', 0):,} NAT fwd kept (now point at another rev)" if d.get("repointed") else "",
            f", {d.get('newer_won', 0):,} newer entries created meanwhile kept" if d.get("newer_won") else "",
            f", {d.get('reinsert_failed', 0):,} refreshed entries LOST (could not be put back: map full)"
            if d.get("reinsert_failed") else "",
            f", via {d['method']}" if d.get("method") == "lookup+delete" else "",
        ])
        return (f"{self.command}: scanned {self.scanned:,}, matched {self.matched:,}"
                + (f" (+{self.nat_partners:,} NAT partners)" if self.nat_partners else "")
                + f", deleted {self.deleted:,}, kept {self.refreshed:,} because refreshed, {self.gone:,} already gone, "
                f"NAT pairs {self.nat_pairs:,}{extra}, backup {self.backup or 'none (nothing to delete)'}, "
                f"{self.seconds:.2f} s")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Selector = Callable[[pl.DataFrame, Any], pl.Series]


def default_max(scanned: int) -> int:
    return max(DEFAULT_MAX_FLOOR, int(scanned * DEFAULT_MAX_FRACTION))


def run(command: str, pin: str | os.PathLike[str] | None, select: Callable[[pl.DataFrame, Any, int], list[int]] | None,
        *, rule: str, yes: bool = False, max_delete: int | None = None, force: bool = False,
        backup_directory: str | os.PathLike[str] | None = None, wait: float = 0.0, layout: str = "auto",
        bpffs: str = DEFAULT_BPFFS, ipv6: bool = False, show: int = 10, say: Say = print) -> ActResult:
    """The shared engine of delete/clean/flush. `select(rows, snapshot, now_ns)` returns the
    row indices to delete (None: every entry)."""
    from ctscope.repair.common import canonical_pin

    t0 = time.perf_counter()
    p = canonical_pin(_pin_for(pin, bpffs, ipv6))
    if not os.path.lexists(p):
        raise PinNotFound(f"{p}: no such pin")
    res = ActResult(command=command, pin=str(p), dry_run=not yes, rule=rule)
    if yes:
        bdir = backup_dir(backup_directory)  # checked before the lock and the scan: fail early
        with write_lock(p, command, wait=wait):
            _run_locked(res, p, select, yes=True, max_delete=max_delete, force=force, bdir=bdir, layout=layout,
                        show=show, say=say)
    else:
        _run_locked(res, p, select, yes=False, max_delete=max_delete, force=force, bdir=None, layout=layout,
                    show=show, say=say)
    res.seconds = round(time.perf_counter() - t0, 3)
    say(res.summary())
    return res


def _run_locked(res: ActResult, p: Path, select, *, yes: bool, max_delete: int | None, force: bool,
                bdir: Path | None, layout: str, show: int, say: Say) -> None:
    live = LiveMap(str(p), writable=yes)
    params = live.params
    if not is_ct_layout(params):
        raise NotACtMap(f"{p}: {params['map_type']} map {params['name']!r} with {params['key_size']}/"
                        f"{params['value_size']}-byte entries is not a Calico CT map; {res.command} acts on CT maps "
                        "only (it needs last_seen to delete race-safely)")
    if yes and bdir is not None:
        remove_stale_partials(bdir, params["name"], say)
    clock = [time.perf_counter()]

    def mark(phase: str) -> None:
        t = time.perf_counter()
        res.timings[phase] = round(t - clock[0], 4)
        clock[0] = t

    now = monotonic_ns()
    snap = live.snapshot()
    res.scanned = snap.count
    mark("scan")
    if select is None:
        idx = range(snap.count)
        rows = None
    else:
        rows_native, _lay = _native.snapshot_rows(snap, layout, now)
        rows = pl.DataFrame(rows_native).with_row_index("_i")
        mark("decode")
        idx = select(rows, snap, now)
        mark("judge")
    res.matched = len(idx)
    partners = _native.nat_partners(snap, idx) if select is not None else []
    res.nat_partners = len(partners)
    if partners:
        idx = list(idx) + list(partners)
    res.to_delete = len(idx)
    limit = max_delete if max_delete is not None else default_max(snap.count)
    over = res.command != "flush" and res.to_delete > limit and not force
    if over and not yes:
        say(f"note: {res.to_delete:,} entries is more than --max {limit:,}: with --yes this refuses unless --max N or "
            "--force")
    elif over:
        raise BadArgument(
            f"{p}: would delete {res.to_delete:,} of {snap.count:,} entries, more than --max {limit:,}"
            + ("" if max_delete is not None else f" (default: the larger of {DEFAULT_MAX_FLOOR:,} and "
               f"{DEFAULT_MAX_FRACTION:.0%} of the entries)") + "; check the selection with a dry run, then pass "
            "--max N or --force")
    if partners:
        say(f"note: {len(partners):,} NAT partner entries added: deleting one side of a NAT pair deletes the other")
    if not yes:
        if rows is not None and idx and show:
            _show_rows(rows, idx[:show], say)
        return
    if not res.to_delete:
        return  # nothing to remove: no backup file either
    cand = snap if select is None else _native.snapshot_take(snap, idx)
    assert bdir is not None  # given whenever `yes`
    bpath = new_backup_path(bdir, res.command, params["name"])
    cand.write(str(bpath))
    res.backup = str(bpath)
    mark("backup")
    _crash_point("backup")
    _hold_point()
    counts, _removed = _native.remove_entries(live, cand, True, _crash_after_deletions(),
                                              os.environ.get(FALLBACK_ENV) == "1")
    res.details = dict(counts)
    res.deleted = counts["deleted"]
    res.refreshed = counts["refreshed"] + counts["fwd_kept_with_rev"] + counts["repointed"]
    res.gone = counts["gone"]
    res.nat_pairs = counts["pairs"]
    mark("delete")
    _crash_point("delete")


def _show_rows(rows: pl.DataFrame, idx: Sequence[int], say: Say) -> None:
    import io

    from ctscope import export

    sub = rows.filter(pl.col("_i").is_in(idx)).drop("_i")
    buf = io.StringIO()
    export.write_text(iter([sub]), "table", buf)
    say(f"first {sub.height} of the entries to delete:")
    say(buf.getvalue().rstrip("\n"))


def delete(pin: str | os.PathLike[str] | None = None, *, where: str | None = None, tuples: list[str] | None = None,
           **kw) -> ActResult:
    """Delete the entries `where` (SQL on dump's columns) selects, or those of the given
    tuples ("PROTO SRC[:PORT] DST[:PORT]", the `get` syntax), with their NAT partners."""
    if bool(where) == bool(tuples):
        raise BadArgument("delete needs exactly one of --where SQL or --tuple \"PROTO SRC[:PORT] DST[:PORT]\"")
    if where:
        from ctscope.export import parse_where

        def select(rows: pl.DataFrame, snap, now) -> list[int]:
            expr = parse_where(where, rows.schema)
            return rows.filter(expr)["_i"].to_list()

        rule = f"--where {where}"
    else:
        keys: list[bytes] = []
        fams = set()
        for t in tuples or []:
            parts = t.split()
            if len(parts) != 3:
                raise BadArgument(f"--tuple {t!r}: expected \"PROTO SRC[:PORT] DST[:PORT]\"")
            fam, ks = tuple_keys(*parts)
            fams.add(fam)
            keys += [k for k, _ in ks]
        if len(fams) > 1:
            raise BadArgument("--tuple: IPv4 and IPv6 tuples at once; one map holds one family")
        kw.setdefault("ipv6", fams == {6})

        def select(rows: pl.DataFrame, snap, now) -> list[int]:
            return _native.find_keys(snap, keys)

        rule = "--tuple " + "; ".join(tuples or [])
    return run("delete", pin, select, rule=rule, **kw)


def clean(pin: str | os.PathLike[str] | None = None, *, timeouts: str | None = None, felix_config: str | None = None,
          where: str | None = None, **kw) -> ActResult:
    """Delete what `ctscope expired` judges expired (Felix's rules), race-safely."""
    from ctscope.analysis.expiry import with_expiry
    from ctscope.analysis.timeouts import Timeouts
    from ctscope.export import parse_where

    t = Timeouts.resolve(timeouts, felix_config=felix_config)

    def select(rows: pl.DataFrame, snap, now) -> list[int]:
        judged = with_expiry(rows, t, now).filter(pl.col("expired"))
        if where:  # as `expired --where`: the judged columns (expired, expire_reason) too
            judged = judged.filter(parse_where(where, judged.collect_schema()))
        return judged.select("_i").collect()["_i"].to_list()

    return run("clean", pin, select, rule=f"Felix's expiry rules ({t.spec()})" + (f", --where {where}" if where else ""),
               **kw)


def flush(pin: str | os.PathLike[str] | None = None, **kw) -> ActResult:
    """Delete every entry (the backup keeps them all)."""
    return run("flush", pin, None, rule="every entry", **kw)
