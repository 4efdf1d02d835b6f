"""get / delete / clean / flush / restore on the real kernel (private bpffs).

Entries are written with the tests' own byte builders (ctbytes, from the facts file), the
map is read back with the tests' own bpf(2) calls (bpfkernel), and `get` is checked against
`bpftool map lookup`."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import bpfkernel
import ctbytes as cb
from conftest import build_c

import ctscope
from ctscope import act
from ctscope.pinlock import pin_lock

HERE = Path(__file__).parent
S = 1_000_000_000


@pytest.fixture(autouse=True)
def _dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("CTSCOPE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("CTSCOPE_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.delenv("CTSCOPE_TEST_CRASH_AFTER", raising=False)
    monkeypatch.delenv("CTSCOPE_TEST_HOLD_AFTER_BACKUP", raising=False)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctscope", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def now() -> int:
    return bpfkernel.clock_monotonic_ns()


def addr(family: int, i: int, side: str) -> str:
    if family == 4:
        return f"10.{1 if side == 'a' else 2}.{(i >> 8) & 255}.{i & 255}"
    return f"fd00:{1 if side == 'a' else 2}::{i:x}"


def calico_key(proto: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    """Facts §2: A is the source iff src < dst (address words as native u32) or equal
    addresses and sport < dport."""
    fam = cb.family_of(src)
    sb, db = cb.ip_bytes(src, fam), cb.ip_bytes(dst, fam)
    words = lambda b: [int.from_bytes(b[i:i + 4], sys.byteorder) for i in range(0, len(b), 4)]  # noqa: E731
    if (words(sb), sport) < (words(db), dport):
        return cb.pack_key(proto, src, sport, dst, dport)
    return cb.pack_key(proto, dst, dport, src, sport)


def ts0_default(layout, last_seen):
    """Offset 0: `created` for v2/v3-created, `rst_seen` (0: no RST) for v3/v4."""
    return last_seen - S if layout in ("v2", "v3-created") else 0


def normal(layout, family, proto, i, last_seen, *, ts0=None, legs=None, sport=None, dport=None):
    """(key, value) of a NORMAL entry i, A = (a-side, sport), B = (b-side, dport)."""
    sp = sport if sport is not None else (40000 + i % 20000 if proto in (6, 17, 132) else 0)
    dp = dport if dport is not None else (443 if proto in (6, 17, 132) else 0)
    key = cb.pack_key(proto, addr(family, i, "a"), sp, addr(family, i, "b"), dp)
    a2b, b2a = legs or (cb.Leg(), cb.Leg())
    val = cb.pack_value(layout, family, ts0=ts0_default(layout, last_seen) if ts0 is None else ts0,
                        last_seen=last_seen, a2b=a2b, b2a=b2a)
    return key, val


def nat_pair(layout, family, i, last_seen):
    """(fwd key, fwd value, rev key, rev value): UDP client -> service VIP, rev to a backend."""
    client, vip, backend = addr(family, i, "a"), ("10.96.0.10" if family == 4 else "fd00:96::10"), addr(family, i, "b")
    fkey = calico_key(cb.UDP, client, 30000 + i % 30000, vip, 53)
    rkey = calico_key(cb.UDP, client, 30000 + i % 30000, backend, 5353)
    ts0 = ts0_default(layout, last_seen)
    fval = cb.pack_nat_fwd(layout, family, ts0=ts0, last_seen=last_seen, rev_key=cb.unpack_key(rkey))
    rval = cb.pack_value(layout, family, ts0=ts0, last_seen=last_seen, type_=cb.NAT_REV, orig_ip=vip, orig_port=53)
    return fkey, fval, rkey, rval


GET_CASES = [("v2", 4), ("v3-created", 4), ("v3", 4), ("v4", 4), ("v3", 6), ("v4", 6), ("v3-created", 6)]


# --------------------------------------------------------------------------- get

@pytest.mark.parametrize("layout,family", GET_CASES)
def test_get_hits_misses_both_orders_and_nat_follow(make_ct_map, layout, family, bpftool, tmp_path):
    m = make_ct_map(layout, family)
    t = now()
    est = (cb.Leg(syn=True, ack=True, opener=True), cb.Leg(syn=True, ack=True))
    entries = dict(normal(layout, family, cb.TCP, i, t - i * S, legs=est) for i in range(50))
    fk, fv, rk, rv = nat_pair(layout, family, 7, t)
    entries |= {fk: fv, rk: rv}
    m.fill(entries.items())

    a, b = addr(family, 3, "a"), addr(family, 3, "b")
    br = (lambda x: f"[{x}]") if family == 6 else (lambda x: x)
    # As the client sent it, and as the server's reply (the other order): the same entry.
    for s_, d_ in ((f"{br(a)}:40003", f"{br(b)}:443"), (f"{br(b)}:443", f"{br(a)}:40003")):
        df = ctscope.lookup("tcp", s_, d_, m.path)
        assert df.height == 1, (s_, d_)
        assert df["type"][0] == "normal" and df["port_a"][0] == 40003 and df["port_b"][0] == 443
        if layout != "v2":
            assert df["tcp_state"][0] == "ESTABLISHED"
    key = cb.pack_key(cb.TCP, a, 40003, b, 443)
    # Agrees with bpftool: the entry found is exactly the key/value bpftool reads.
    r = subprocess.run([bpftool, "-j", "map", "lookup", "pinned", str(m.path), "key", "hex", *[f"{x:02x}" for x in key]],
                       capture_output=True, text=True, check=True)
    got = json.loads(r.stdout)
    bt_value = bytes(int(x, 16) for x in got["value"])
    assert bt_value == entries[key]
    df = act.lookup("6", f"{br(a)}:40003", f"{br(b)}:443", m.path)
    assert df["last_seen_ns"][0] == struct.unpack_from("<Q", bt_value, 8)[0]

    # NAT: the fwd entry and the rev entry it points at.
    client = addr(family, 7, "a")
    vip = "10.96.0.10" if family == 4 else "[fd00:96::10]"
    df = act.lookup("udp", f"{br(client)}:{30007}", f"{vip}:53", m.path)
    assert df["type"].to_list() == ["nat_fwd", "nat_rev"]
    assert df["found_by"].to_list() == ["key", "nat_rev"]
    # `any` finds it too.
    assert act.lookup("any", f"{br(client)}:{30007}", f"{vip}:53", m.path).height == 2
    # The table says how each row was found, as every other format does.
    r = cli("get", "udp", f"{br(client)}:{30007}", f"{vip}:53", str(m.path), "-f", "table")
    header, fwd_row, rev_row = r.stdout.splitlines()[:3]
    assert header.split()[0] == "FOUND_BY" and fwd_row.split()[0] == "key" and rev_row.split()[0] == "nat_rev", r.stdout

    # Misses: wrong port, wrong protocol. The CLI says so with exit 6, in every format.
    assert act.lookup("tcp", f"{br(a)}:40004", f"{br(b)}:443", m.path).height == 0
    assert act.lookup("udp", f"{br(a)}:40003", f"{br(b)}:443", m.path).height == 0
    r = cli("get", "tcp", f"{br(a)}:40004", f"{br(b)}:443", str(m.path))
    assert r.returncode == 6 and "no entry" in r.stderr
    for fmt in ("table", "json", "ndjson", "csv"):
        r = cli("get", "tcp", f"{br(a)}:40003", f"{br(b)}:443", str(m.path), "-f", fmt)
        assert r.returncode == 0, r.stderr
        assert "40003" in r.stdout
    out = tmp_path / "one.parquet"
    r = cli("get", "tcp", f"{br(a)}:40003", f"{br(b)}:443", str(m.path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(out)["port_a"].to_list() == [40003]


def test_get_key_order_is_calicos(make_ct_map):
    """Calico orders A/B comparing the address words as native u32: on little-endian hosts
    1.0.0.2 > 2.0.0.1. Only the key in that order is Calico's."""
    m = make_ct_map("v4", 4)
    t = now()
    key = cb.pack_key(cb.TCP, "2.0.0.1", 80, "1.0.0.2", 5000) if sys.byteorder == "little" else \
        cb.pack_key(cb.TCP, "1.0.0.2", 5000, "2.0.0.1", 80)
    m.update(key, cb.pack_value("v4", 4, ts0=0, last_seen=t))
    df = act.lookup("tcp", "1.0.0.2:5000", "2.0.0.1:80", m.path)
    assert df.height == 1 and df["found_by"][0] == "key"
    built = ctscope._native.build_key(4, 6, bytes([1, 0, 0, 2]), 5000, bytes([2, 0, 0, 1]), 80, True)
    assert built == key


# --------------------------------------------------------------------------- delete --where

PROTOS = [("tcp", cb.TCP), ("udp", cb.UDP), ("icmp", None), ("sctp", cb.SCTP), ("other", 47)]


@pytest.mark.parametrize("family", [4, 6])
def test_delete_where_each_protocol_dry_run_changes_nothing(make_ct_map, family):
    m = make_ct_map("v4", family, 4096)
    t = now()
    icmp = cb.ICMP if family == 4 else cb.ICMP6
    entries = {}
    for n, (_name, proto) in enumerate(PROTOS):
        for i in range(40):
            entries.update([normal("v4", family, proto or icmp, n * 100 + i, t)])
    m.fill(entries.items())
    before = m.items()
    for name, proto in PROTOS:
        p = proto or icmp
        where = f"proto = {p}"
        r = cli("delete", str(m.path), "--where", where)
        assert r.returncode == 0, r.stderr
        assert "would delete 40" in r.stdout
        assert m.items() == before, "a dry run changed the map"
        r = cli("delete", str(m.path), "--where", where, "--yes")
        assert r.returncode == 0, r.stderr
        assert "deleted 40," in r.stdout, r.stdout
        now_items = m.items()
        gone = set(before) - set(now_items)
        assert gone == {k for k in before if struct.unpack_from("<I", k)[0] == p}, name
        assert all(now_items[k] == before[k] for k in now_items)
        before = now_items


def test_delete_one_side_of_nat_pair_deletes_both_and_tuple(make_ct_map):
    m = make_ct_map("v4", 4)
    t = now()
    fk, fv, rk, rv = nat_pair("v4", 4, 1, t)
    fk2, fv2, rk2, rv2 = nat_pair("v4", 4, 2, t)
    m.fill([(fk, fv), (rk, rv), (fk2, fv2), (rk2, rv2)])
    # The rev side only, by its tuple: the fwd pointing at it goes too.
    res = act.delete(m.path, tuples=[f"udp {addr(4, 1, 'a')}:30001 {addr(4, 1, 'b')}:5353"], yes=True)
    assert (res.matched, res.nat_partners, res.deleted, res.nat_pairs) == (1, 1, 2, 1)
    assert set(m.items()) == {fk2, rk2}
    r = cli("delete", str(m.path), "--where", "type = 'nat_fwd'")
    assert "NAT partner" in r.stdout and "would delete 2" in r.stdout


def test_max_refuses_large_deletions_without_force(make_ct_map):
    m = make_ct_map("v4", 4, 4096)
    t = now()
    m.fill(normal("v4", 4, cb.TCP, i, t) for i in range(100))
    r = cli("delete", str(m.path), "--where", "proto = 6", "--max", "50")
    assert r.returncode == 0 and "more than --max 50" in r.stdout
    r = cli("delete", str(m.path), "--where", "proto = 6", "--max", "50", "--yes")
    assert r.returncode == 2 and "--max 50" in r.stderr
    assert len(m.items()) == 100
    r = cli("delete", str(m.path), "--where", "proto = 6", "--max", "50", "--force", "--yes")
    assert r.returncode == 0 and len(m.items()) == 0


# --------------------------------------------------------------------------- backup / restore

@pytest.mark.parametrize("layout,family", [("v4", 4), ("v3", 6), ("v2", 4)])
def test_flush_backup_restore_round_trip_byte_exact(make_ct_map, layout, family, tmp_path):
    m = make_ct_map(layout, family)
    t = now()
    m.fill(normal(layout, family, cb.TCP, i, t - i) for i in range(200))
    fk, fv, rk, rv = nat_pair(layout, family, 3, t)
    m.update(fk, fv)
    m.update(rk, rv)
    before = m.items()
    r = cli("flush", str(m.path))
    assert r.returncode == 0 and m.items() == before
    r = cli("flush", str(m.path), "--yes")
    assert r.returncode == 0, r.stderr
    assert m.items() == {}
    backup = r.stdout.split("backup ")[1].split(",")[0]
    assert os.stat(backup).st_mode & 0o777 == 0o600
    assert Path(backup).parent == tmp_path / "backups"
    r = cli("restore", str(m.path), "--from", backup, "--yes")
    assert r.returncode == 0, r.stderr
    assert m.items() == before


def test_restore_keeps_newer_entries_unless_overwrite(make_ct_map):
    m = make_ct_map("v4", 4)
    t = now()
    entries = dict(normal("v4", 4, cb.TCP, i, t - 100 * S) for i in range(10))
    m.fill(entries.items())
    res = act.delete(m.path, where="proto = 6", yes=True)
    # Meanwhile the connections came back with newer values for keys 0-4.
    newer = dict(normal("v4", 4, cb.TCP, i, t) for i in range(5))
    m.fill(newer.items())
    r = cli("restore", str(m.path), "--from", res.backup, "--yes")
    assert r.returncode == 0, r.stderr
    items = m.items()
    assert all(items[k] == v for k, v in newer.items())  # newer kept
    assert all(items[k] == entries[k] for k in list(entries)[5:])  # missing ones back
    r = cli("restore", str(m.path), "--from", res.backup, "--yes", "--overwrite")
    assert r.returncode == 0 and m.items() == entries


def test_restore_counts_entries_already_in_the_map(make_ct_map):
    """A rerun of a restore that completed finds every entry identical: it must say so,
    not "kept 0" as if the backup's entries were nowhere."""
    m = make_ct_map("v4", 4)
    entries = dict(normal("v4", 4, cb.TCP, i, now()) for i in range(10))
    m.fill(entries.items())
    res = act.flush(m.path, yes=True, say=lambda s: None)
    assert cli("restore", str(m.path), "--from", res.backup, "--yes").returncode == 0
    r = cli("restore", str(m.path), "--from", res.backup, "--yes")
    assert r.returncode == 0, r.stderr
    assert "0 new keys, 0 older entries replaced" in r.stdout and "10 already identical" in r.stdout
    r = cli("restore", str(m.path), "--from", res.backup)
    assert "10 are already identical" in r.stdout
    assert m.items() == entries

def test_restore_refuses_version_change_and_non_ct(make_ct_map, make_map):
    src = make_ct_map("v4", 4)
    t = now()
    src.fill(normal("v4", 4, cb.TCP, i, t) for i in range(20))
    res = act.flush(src.path, yes=True)
    ct3 = make_ct_map("v3-created", 4)
    ct3.fill(normal("v3-created", 4, cb.TCP, 100 + i, t, ts0=t - S) for i in range(30))
    before = ct3.items()
    r = cli("restore", str(ct3.path), "--from", res.backup, "--yes")
    assert r.returncode == 2 and "ct4" in r.stderr and "ct3" in r.stderr
    assert ct3.items() == before
    other = make_map("plain", bpfkernel.HASH, 16, 88, 1024)
    r = cli("restore", str(other.path), "--from", res.backup, "--yes")
    assert r.returncode == 2 and "not a Calico CT map" in r.stderr
    assert other.items() == {}
    r = cli("restore", str(other.path), "--from", res.backup, "--yes", "--force")
    assert r.returncode == 0 and len(other.items()) == 20


# --------------------------------------------------------------------------- clean under a live writer

@pytest.fixture(scope="module")
def refresh_writer(tmp_path_factory):
    return build_c(HERE / "refresh_writer.c", tmp_path_factory.mktemp("w") / "refresh_writer")


@pytest.mark.parametrize("layout,family", [("v3", 4), ("v4", 4), ("v4", 6)])
def test_clean_under_concurrent_writer(make_ct_map, layout, family, refresh_writer, tmp_path):
    """A writer keeps changing last_seen of a known subset of expired entries (keeping them
    expired) for the whole run; clean is held after its scan and backup until the writer
    has completed two more rounds, so every one of them changed between scan and delete."""
    m = make_ct_map(layout, family, 8192)
    t = now()
    old = t - 300 * S  # UDP expires after 60 s (Felix default); the writer adds 1 ns per round
    fresh, expired_e, refreshed_r = {}, {}, {}
    for i in range(600):
        k, v = normal(layout, family, cb.UDP, i, old)
        (refreshed_r if i % 3 == 0 else expired_e)[k] = v
    for i in range(600, 900):
        k, v = normal(layout, family, cb.UDP, i, t)
        fresh[k] = v
    pairs_e, pairs_r = [], []
    for i in range(900, 960):
        fk, fv, rk, rv = nat_pair(layout, family, i, old)
        (pairs_r if i % 2 else pairs_e).append((fk, rk))
        m.update(fk, fv)
        m.update(rk, rv)
    m.fill(list(fresh.items()) + list(expired_e.items()) + list(refreshed_r.items()))
    before = m.items()
    # The writer refreshes the R singles and the rev side of the R pairs.
    watched = list(refreshed_r) + [rk for _, rk in pairs_r]
    keyfile = tmp_path / "keys"
    keyfile.write_bytes(b"".join(watched))
    ctr = tmp_path / "ctr"
    w = subprocess.Popen([str(refresh_writer), str(m.path), str(keyfile), str(m.key_size), str(m.value_size), str(ctr)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert w.stdout.readline().strip() == "ready"
        hold = str(tmp_path / "hold")
        p = subprocess.Popen([sys.executable, "-m", "ctscope", "clean", str(m.path), "--yes", "--force", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "CTSCOPE_TEST_HOLD_AFTER_BACKUP": hold})
        deadline = time.monotonic() + 120
        while not os.path.exists(hold + ".ready"):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # A second write command on the pin meanwhile: refused with exit 5.
        r = cli("delete", str(m.path), "--where", "proto = 17", "--yes")
        assert r.returncode == 5, r.stderr
        rounds = lambda: struct.unpack("<Q", ctr.read_bytes()[:8])[0]  # noqa: E731
        r0 = rounds()
        while rounds() < r0 + 2:
            time.sleep(0.005)
        Path(hold + ".go").touch()
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        res = json.loads(out)
    finally:
        w.send_signal(signal.SIGTERM)
        w.communicate(timeout=30)
    items = m.items()
    # 0 refreshed entries deleted; every still-expired one deleted; fresh ones untouched.
    assert all(k in items for k in refreshed_r)
    assert all(fk in items and rk in items for fk, rk in pairs_r)
    assert not any(k in items for k in expired_e)
    assert not any(fk in items or rk in items for fk, rk in pairs_e)
    assert all(items[k] == v for k, v in fresh.items())
    n_expired = len(expired_e) + len(refreshed_r) + 2 * (len(pairs_e) + len(pairs_r))
    assert res["matched"] + res["nat_partners"] == n_expired
    assert res["deleted"] == len(expired_e) + 2 * len(pairs_e)
    assert res["nat_pairs"] == len(pairs_e)
    assert res["details"]["refreshed"] == len(refreshed_r) + len(pairs_r)
    assert res["details"]["fwd_kept_with_rev"] == len(pairs_r)
    assert res["gone"] == 0
    # The backup holds every entry the scan matched, as scanned.
    snap = ctscope._native.read_backup(res["backup"])
    assert snap.count == n_expired
    ls = lambda v: struct.unpack_from("<Q", v, 8)[0]  # noqa: E731
    for k, v in snap.items().items():
        if k in watched:  # as the scan saw it: bumped by the writer, otherwise the same
            assert v[:8] + v[16:] == before[k][:8] + before[k][16:] and ls(v) >= ls(before[k])
        else:
            assert v == before[k]


# --------------------------------------------------------------------------- SIGKILL

def test_sigkill_during_delete_loses_nothing_and_rerun_finishes(make_ct_map):
    m = make_ct_map("v4", 4, 4096)
    t = now()
    m.fill(normal("v4", 4, cb.UDP, i, t) for i in range(300))
    m.fill(normal("v4", 4, cb.TCP, i, t) for i in range(300, 400))
    before = m.items()
    r = cli("delete", str(m.path), "--where", "proto = 17", "--yes", env={"CTSCOPE_TEST_CRASH_AFTER": "delete:120"})
    assert r.returncode == -signal.SIGKILL
    backups = sorted((Path(os.environ["CTSCOPE_BACKUP_DIR"])).glob("*.arrow"))
    assert len(backups) == 1
    first = ctscope._native.read_backup(str(backups[0])).items()
    after = m.items()
    assert len(after) == 400 - 120
    # Nothing lost that the backup does not hold.
    assert all(k in after or first.get(k) == v for k, v in before.items())
    # Rerun: the lock was freed by the kill; the rest goes, with a second backup.
    r = cli("delete", str(m.path), "--where", "proto = 17", "--yes")
    assert r.returncode == 0, r.stderr
    assert "deleted 180," in r.stdout
    assert set(m.items()) == {k for k in before if struct.unpack_from("<I", k)[0] == cb.TCP}
    # Both backups restore everything byte for byte.
    for b in sorted((Path(os.environ["CTSCOPE_BACKUP_DIR"])).glob("*.arrow")):
        assert cli("restore", str(m.path), "--from", str(b), "--yes").returncode == 0
    assert m.items() == before


def test_sigkill_after_backup_before_delete(make_ct_map):
    m = make_ct_map("v4", 4)
    t = now()
    m.fill(normal("v4", 4, cb.UDP, i, t) for i in range(50))
    before = m.items()
    r = cli("flush", str(m.path), "--yes", env={"CTSCOPE_TEST_CRASH_AFTER": "backup"})
    assert r.returncode == -signal.SIGKILL
    assert m.items() == before
    assert cli("flush", str(m.path), "--yes").returncode == 0
    assert m.items() == {}


def test_rerun_removes_partial_backups_of_killed_runs(make_ct_map):
    """A SIGKILL while the backup is written leaves `.<backup>.<pid>.partial` (connection
    data, never finished): the rerun removes it, as resize's rerun does; a live pid's stays."""
    m = make_ct_map("v4", 4)
    m.fill(normal("v4", 4, cb.UDP, i, now()) for i in range(20))
    bdir = Path(os.environ["CTSCOPE_BACKUP_DIR"])
    bdir.mkdir(mode=0o700)
    gone = subprocess.Popen(["true"])
    gone.wait()
    name = m.info.name
    dead = bdir / f".ctscope-flush-{name}-20260101T000000Z.arrow.{gone.pid}.partial"
    live = bdir / f".ctscope-clean-{name}-20260101T000000Z.arrow.{os.getpid()}.partial"
    other = bdir / f".ctscope-flush-othermap-20260101T000000Z.arrow.{gone.pid}.partial"
    for f in (dead, live, other):
        f.write_bytes(b"partial")
    r = cli("delete", str(m.path), "--where", "proto = 17", "--yes")
    assert r.returncode == 0, r.stderr
    assert not dead.exists() and str(dead) in r.stdout
    assert live.exists() and other.exists()

def test_unsafe_backup_directory_is_exit_4_and_changes_nothing(make_ct_map, tmp_path):
    """README "Exit codes": output that may not be written there (a link, a directory others
    can write) is exit 4, like every other refused output path; not a generic exit 1."""
    m = make_ct_map("v4", 4)
    m.fill(normal("v4", 4, cb.UDP, i, now()) for i in range(5))
    before = m.items()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o1777)
    # a directory of its own inside one another user owns: that user could rename it away
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    for d in (tmp_path / "link", wide, theirs / "b"):
        r = cli("flush", str(m.path), "--yes", "--backup-dir", str(d))
        assert r.returncode == 4 and "backup directory" in r.stderr, r.stderr
    assert "parent" in r.stderr and not (theirs / "b").exists()
    assert m.items() == before

def test_one_write_command_per_map_through_any_pin_name(make_ct_map, pin_dir, tmp_path):
    """The same map under a second pin name (a hard link on the bpffs, or `bpftool map pin`)
    had its own pin lock: a delete through it ran while a flush through the first name was
    between its backup and its deletes. The map's own lock makes the second one exit 5."""
    m = make_ct_map("v4", 4)
    m.fill(normal("v4", 4, cb.UDP, i, now()) for i in range(20))
    other = pin_dir / "cali_v4_ct4_again"
    os.link(m.path, other)
    hold = str(tmp_path / "hold")
    p = subprocess.Popen([sys.executable, "-m", "ctscope", "flush", str(m.path), "--yes"],
                         env={**os.environ, "CTSCOPE_TEST_HOLD_AFTER_BACKUP": hold},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not os.path.exists(hold + ".ready"):
            assert p.poll() is None, p.stderr.read()
            time.sleep(0.05)
        for args in (["delete", str(other), "--where", "proto = 17", "--yes"],
                     ["restore", str(other), "--from", str(next(Path(os.environ["CTSCOPE_BACKUP_DIR"]).glob("*.arrow"))),
                      "--yes"]):
            r = cli(*args)
            assert r.returncode == 5 and str(m.path) in r.stderr, (args, r.stderr)
    finally:
        Path(hold + ".go").touch()
        assert p.wait(timeout=120) == 0
    os.unlink(other)
    assert "deleted 20," in p.stdout.read()

def test_write_commands_refuse_symlinks_and_busy_lock(make_ct_map, pin_dir):
    m = make_ct_map("v4", 4)
    link = pin_dir / "link"
    os.symlink(m.path, link)
    r = cli("flush", str(link), "--yes")
    assert r.returncode == 2 and "symlink" in r.stderr
    with pin_lock(m.path, "test"):
        for args in (["flush", str(m.path), "--yes"], ["clean", str(m.path), "--yes"],
                     ["delete", str(m.path), "-w", "proto = 6", "--yes"]):
            r = cli(*args)
            assert r.returncode == 5, (args, r.stderr)


@pytest.mark.parametrize("fallback", [False, True])
def test_clean_keeps_entries_changed_after_the_scan(make_ct_map, fallback, tmp_path):
    """Held after its scan and backup, clean finds some expired entries refreshed (last_seen
    changed, still expired), some already deleted, and a NAT fwd pointing at another rev:
    those are kept or counted as gone, the rest deleted; with the fallback for kernels
    without BPF_MAP_LOOKUP_AND_DELETE_ELEM (lookup + compare + delete) too."""
    m = make_ct_map("v4", 4)
    t = now()
    old = t - 300 * S
    single = dict(normal("v4", 4, cb.UDP, i, old) for i in range(30))
    fk, fv, rk, rv = nat_pair("v4", 4, 100, old)
    m.fill(list(single.items()) + [(fk, fv), (rk, rv)])
    keys = list(single)
    hold = str(tmp_path / "hold")
    env = {"CTSCOPE_TEST_HOLD_AFTER_BACKUP": hold, "CTSCOPE_TEST_NO_LOOKUP_AND_DELETE": "1" if fallback else "0"}
    p = subprocess.Popen([sys.executable, "-m", "ctscope", "clean", str(m.path), "--yes", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    deadline = time.monotonic() + 120
    while not os.path.exists(hold + ".ready"):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    bumped = {}
    for k in keys[:5]:  # traffic: last_seen moves (still expired)
        v = bytearray(single[k])
        struct.pack_into("<Q", v, 8, old + 1)
        m.update(k, bytes(v))
        bumped[k] = bytes(v)
    for k in keys[5:8]:  # Felix got there first
        m.delete(k)
    # The fwd entry now points at another rev (a new NAT decision): the rev goes, the fwd stays.
    other = cb.unpack_key(calico_key(cb.UDP, addr(4, 100, "a"), 30100, "10.2.9.9", 5353))
    fv2 = cb.pack_nat_fwd("v4", 4, ts0=0, last_seen=old, rev_key=other)
    m.update(fk, fv2)
    Path(hold + ".go").touch()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    res = json.loads(out)
    items = m.items()
    assert {k: items.get(k) for k in bumped} == bumped
    assert set(items) == set(bumped) | {fk}
    assert items[fk] == fv2
    assert res["deleted"] == 30 - 5 - 3 + 1
    assert res["gone"] == 3
    assert res["details"]["refreshed"] == 5
    assert res["details"]["repointed"] == 1
    assert res["details"]["method"] == ("lookup+delete" if fallback else "lookup_and_delete")


def test_bench_write_measures_clean_against_its_floor(bpffs):
    r = cli("bench", "--write", "--entries", "20000", "--repeat", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["entries"] == 20000 and out["expired"] > 0
    assert out["floor_s"] > 0 and out["ratio_to_floor"] > 0
    assert cli("bench", "--write", "/sys/fs/bpf/x").returncode == 2


def test_clean_deletes_exactly_what_expired_lists(make_ct_map):
    m = make_ct_map("v4", 4, 4096)
    t = now()
    est = (cb.Leg(syn=True, ack=True, opener=True), cb.Leg(syn=True, ack=True))
    entries = {}
    entries.update(normal("v4", 4, cb.UDP, i, t - 300 * S) for i in range(20))          # expired: UDP 60 s
    entries.update(normal("v4", 4, cb.UDP, i, t) for i in range(20, 40))                # fresh
    entries.update(normal("v4", 4, cb.TCP, i, t - 600 * S, legs=est) for i in range(40, 60))  # established < 1 h
    entries.update(normal("v4", 4, cb.TCP, i, t - 600 * S) for i in range(60, 80))      # SYN-SENT > 20 s: expired
    entries.update(normal("v4", 4, cb.ICMP, i, t - 60 * S) for i in range(80, 90))      # ICMP > 5 s: expired
    fk, fv, rk, rv = nat_pair("v4", 4, 95, t - 300 * S)
    entries |= {fk: fv, rk: rv}
    m.fill(entries.items())
    listed = ctscope.expired(str(m.path))
    want = {
        cb.pack_key(r["proto"], r["addr_a"], r["port_a"], r["addr_b"], r["port_b"]) for r in listed.iter_rows(named=True)}
    assert len(want) == 20 + 20 + 10 + 2
    res = act.clean(m.path, yes=True, say=lambda s: None)
    assert res.deleted == len(want) and res.nat_pairs == 1
    assert set(entries) - set(m.items()) == want


def test_clean_where_sees_expire_reason_as_expired_does(make_ct_map):
    """README: clean's --where is "as for expired", whose --where can name expire_reason."""
    m = make_ct_map("v4", 4, 4096)
    t = now()
    m.fill(normal("v4", 4, cb.UDP, i, t - 300 * S) for i in range(10))   # idle UDP: expired
    m.fill(normal("v4", 4, cb.ICMP, i, t - 60 * S) for i in range(10, 15))  # idle ICMP: expired
    where = "expire_reason LIKE '%ICMP%'"
    listed = ctscope.expired(str(m.path), where=where)
    assert listed.height == 5
    res = act.clean(m.path, where=where, yes=True, say=lambda s: None)
    assert res.deleted == 5
    assert {struct.unpack_from("<I", k)[0] for k in m.items()} == {cb.UDP}

def test_nothing_matched_writes_no_backup(make_ct_map, tmp_path):
    m = make_ct_map("v4", 4)
    m.fill([normal("v4", 4, cb.TCP, 1, now())])
    r = cli("delete", str(m.path), "--where", "proto = 17", "--yes")
    assert r.returncode == 0 and "deleted 0," in r.stdout and "backup none" in r.stdout
    assert not list((tmp_path / "backups").glob("*.arrow"))
    assert len(m.items()) == 1


def test_get_endpoint_syntax_errors_are_one_line_exit_2():
    """Ports are ASCII digits only: `isdigit()` alone took '٣' (Arabic-Indic three) as port 3."""
    for src in ("10.0.0.1:\u0663", "10.0.0.1:65536", "10.0.0.1:-1", "[fd00::1]x", "nonsense:1"):
        r = cli("get", "tcp", src, "10.0.0.2:80", "/nonexistent/cali_v4_ct4")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (src, r.stderr)
