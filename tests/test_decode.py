"""Every column, for hand-built entries of every layout and family, read back from a real pinned map.

The bytes come from ctbytes (written from the facts file), are written into a kernel map with
bpfkernel, and ctscope must decode them to the values computed here from the entries' meaning.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import struct

import polars as pl
import pytest

import bpfkernel
import ctbytes as cb
from ctbytes import Key, Leg

import ctscope
from ctscope import errors

pytestmark = pytest.mark.kernel

NOW = 86_400 * 10**9 + 123_456_789  # reference "now" (monotonic ns) passed as now_ns
S = 10**9

CASES = [("v2", 4), ("v3-created", 4), ("v3-created", 6), ("v3", 4), ("v3", 6), ("v4", 4), ("v4", 6)]
CASE_IDS = [f"{lay}-ipv{fam}" for lay, fam in CASES]

TYPE_NAMES = {cb.NORMAL: "normal", cb.NAT_FWD: "nat_fwd", cb.NAT_REV: "nat_rev"}
LEG_FIELDS = ("bytes", "packets", "seqno", "syn", "ack", "fin", "rst", "approved", "opener", "workload", "ifindex")
NAT_COLS = ("tun_ip", "orig_ip", "orig_port", "orig_sport", "orig_sip")
REV_COLS = ("rev_proto", "rev_addr_a", "rev_port_a", "rev_addr_b", "rev_port_b", "nat_sport")

STR = "str"  # String, or Categorical/Enum (compared by value)
DTYPES = {
    "proto": pl.UInt8, "addr_a": STR, "port_a": pl.UInt16, "addr_b": STR, "port_b": pl.UInt16,
    "src": STR, "sport": pl.UInt16, "dst": STR, "dport": pl.UInt16,
    "type": STR, "flags": pl.UInt32, "flag_names": pl.List(pl.String),
    "last_seen_ns": pl.UInt64, "rst_seen_ns": pl.UInt64, "created_ns": pl.UInt64, "idle_s": pl.Float64,
    "tcp_state": STR,
    "tun_ip": STR, "orig_ip": STR, "orig_port": pl.UInt16, "orig_sport": pl.UInt16, "orig_sip": STR,
    "rev_proto": pl.UInt8, "rev_addr_a": STR, "rev_port_a": pl.UInt16, "rev_addr_b": STR, "rev_port_b": pl.UInt16,
    "nat_sport": pl.UInt16,
}
for _d in ("a2b", "b2a"):
    DTYPES.update({f"{_d}_bytes": pl.UInt64, f"{_d}_packets": pl.UInt32, f"{_d}_seqno": pl.UInt32,
                   f"{_d}_ifindex": pl.UInt32})
    for _f in ("syn", "ack", "fin", "rst", "approved", "opener", "workload"):
        DTYPES[f"{_d}_{_f}"] = pl.Boolean
KEY_COLS = ["proto", "addr_a", "port_a", "addr_b", "port_b"]


def dtype_ok(got, want) -> bool:
    if want == STR:
        return got == pl.String or isinstance(got, (pl.Categorical, pl.Enum))
    return got == want


# ----------------------------------------------------------------------------------------- entries
@dataclasses.dataclass
class Entry:
    label: str
    key: Key
    type_: int = cb.NORMAL
    flags: int = 0  # full 32-bit word as written (bytes 17, 23, 18, 19)
    ts0: int = 0  # offset 0: created (v2, v3-created) or rst_seen (v3, v4)
    last_seen: int = NOW - 5 * S
    a2b: Leg = Leg()
    b2a: Leg = Leg()
    tun_ip: str | None = None
    orig_ip: str | None = None
    orig_port: int = 0
    orig_sport: int = 0
    orig_sip: str | None = None
    rev_key: Key | None = None
    nat_sport: int = 0

    def value(self, layout: str, family: int) -> bytes:
        if self.type_ == cb.NAT_FWD:
            return cb.pack_nat_fwd(layout, family, ts0=self.ts0, last_seen=self.last_seen, flags=self.flags,
                                   rev_key=self.rev_key, nat_sport=self.nat_sport)
        return cb.pack_value(layout, family, ts0=self.ts0, last_seen=self.last_seen, type_=self.type_,
                             flags=self.flags, a2b=self.a2b, b2a=self.b2a, tun_ip=self.tun_ip,
                             orig_ip=self.orig_ip, orig_port=self.orig_port, orig_sport=self.orig_sport,
                             orig_sip=self.orig_sip)


def addrs(family: int) -> dict[str, str]:
    if family == 4:
        return dict(pod="10.65.0.2", pod2="10.65.1.7", client="10.65.3.200", svc="10.96.0.10",
                    node="192.168.1.20", ext="172.16.5.4", hi="255.255.255.254",
                    t1="0.0.0.1", t2="255.255.255.255", t3="1.0.0.0", t4="100.64.0.0")
    return dict(pod="fd00:10:65::2", pod2="fd00:10:65:1::7", client="fd00:10:65:3::c8", svc="fd00:10:96::a",
                node="2001:db8::1:20", ext="::ffff:172.16.5.4", hi="ffff:ffff::fffe",
                # text-form edge cases (RFC 5952: first longest zero run; IPv4-compatible is plain hex)
                t1="1:0:0:1:0:0:1:1", t2="::1.2.3.4", t3="0:0:1:0:0:0:0:0", t4="::1")


def build_entries(family: int) -> list[Entry]:
    a = addrs(family)
    icmp = cb.ICMP if family == 4 else cb.ICMP6
    estab_a = Leg(bytes=5_000_000_000_123, packets=4_000_000_001, seqno=0xDEADBEEF, syn=True, ack=True,
                  approved=True, opener=True, workload=True, ifindex=7)
    estab_b = Leg(bytes=12_345, packets=99, seqno=1, syn=True, ack=True, approved=True, ifindex=0)
    rev_key = Key(cb.TCP, a["pod2"], 8080, a["client"], 40000)
    return [
        Entry("tcp-established-AB", Key(cb.TCP, a["pod"], 43210, a["pod2"], 443), flags=0x01 | 0x40,
              ts0=NOW - 3600 * S, last_seen=NOW - 2 * S, a2b=estab_a, b2a=estab_b),
        Entry("tcp-synsent-BA", Key(cb.TCP, a["pod"], 443, a["pod2"], 50123), flags=0x100 | 0x200,
              ts0=NOW - 30 * S, last_seen=NOW - 25 * S,
              b2a=Leg(bytes=60, packets=1, seqno=0x80000000, syn=True, opener=True, approved=True, ifindex=3)),
        Entry("tcp-closed-fins", Key(cb.TCP, a["client"], 1, a["svc"], 2), flags=0x80,
              ts0=0, last_seen=NOW - 7 * S,
              a2b=Leg(bytes=100, packets=3, seqno=10, syn=True, ack=True, fin=True, opener=True, ifindex=11),
              b2a=Leg(bytes=200, packets=4, seqno=20, syn=True, ack=True, fin=True, ifindex=12)),
        Entry("tcp-dsr-one-fin", Key(cb.TCP, a["ext"], 5555, a["pod"], 80), flags=0x02 | 0x04,
              ts0=NOW - 9 * S, last_seen=NOW - 8 * S,
              a2b=Leg(bytes=1, packets=1, seqno=77, syn=True, ack=True, fin=True, opener=True),
              b2a=Leg(syn=True, ack=True)),
        Entry("tcp-half-fin-not-dsr", Key(cb.TCP, a["ext"], 5556, a["pod"], 80), flags=0,
              ts0=NOW - 9 * S, last_seen=NOW - 8 * S,
              a2b=Leg(syn=True, ack=True, fin=True, opener=True), b2a=Leg(syn=True, ack=True)),
        Entry("tcp-reset", Key(cb.TCP, a["pod"], 1000, a["ext"], 2000), flags=0x08,
              ts0=NOW - 50 * S, last_seen=NOW - 41 * S,
              a2b=Leg(syn=True, ack=True, rst=True, opener=True), b2a=Leg(syn=True, ack=True)),
        Entry("nat-rev-tcp", rev_key, type_=cb.NAT_REV, flags=0x04 | 0x1000 | 0x800,
              ts0=NOW - 100 * S, last_seen=NOW - 3 * S, a2b=estab_b, b2a=estab_a,
              tun_ip=a["node"], orig_ip=a["svc"], orig_port=80, orig_sport=40001, orig_sip=a["ext"]),
        Entry("nat-fwd-tcp", Key(cb.TCP, a["client"], 40000, a["svc"], 80), type_=cb.NAT_FWD, flags=0x01,
              ts0=NOW - 100 * S, last_seen=NOW - 3 * S, rev_key=rev_key, nat_sport=33333),
        Entry("nat-fwd-udp-BA", Key(cb.UDP, a["svc"], 53, a["client"], 41000), type_=cb.NAT_FWD,
              flags=0x100 | 0x400, ts0=NOW - 4 * S, last_seen=NOW - 1 * S,
              rev_key=Key(cb.UDP, a["pod"], 53, a["client"], 41000), nat_sport=0),
        Entry("nat-rev-udp", Key(cb.UDP, a["pod"], 53, a["client"], 41000), type_=cb.NAT_REV, flags=0x100,
              ts0=NOW - 4 * S, last_seen=NOW - 1 * S,
              a2b=Leg(bytes=300, packets=2, ifindex=4, approved=True),
              b2a=Leg(bytes=120, packets=2, opener=True, workload=True, ifindex=5),
              orig_ip=a["svc"], orig_port=53, orig_sport=0),
        Entry("udp-normal-hiflags", Key(cb.UDP, a["pod"], 123, a["node"], 123), flags=0x8000 | 0x10000 | 0x2000,
              ts0=NOW - 61 * S, last_seen=NOW - 60 * S - 1,
              a2b=Leg(bytes=76, packets=1, opener=True, ifindex=9), b2a=Leg(bytes=76, packets=1, ifindex=9)),
        Entry("icmp", Key(icmp, a["pod"], 0x1234, a["ext"], 0), flags=0,
              ts0=NOW - 2 * S, last_seen=NOW - 1 * S, a2b=Leg(bytes=84, packets=1, opener=True, ifindex=2)),
        Entry("proto-253", Key(253, a["pod"], 0, a["pod2"], 0), flags=0x40,
              ts0=NOW - 700 * S, last_seen=NOW - 601 * S, a2b=Leg(bytes=1000, packets=10, opener=True)),
        Entry("unknown-type-7", Key(cb.UDP, a["pod2"], 9999, a["ext"], 53), type_=7, flags=0x01,
              ts0=NOW - 5 * S, last_seen=NOW - 5 * S,
              a2b=Leg(bytes=5, packets=5, seqno=5, syn=True, ifindex=5)),
        Entry("unknown-flag-bits", Key(cb.TCP, a["pod2"], 22, a["client"], 60000),
              flags=0x10 | 0x20 | 0x80 | 0x100 | 0x4000 | 0x20000 | 0x200000 | 0x400000 | 0x80000000,
              ts0=NOW - 10 * S, last_seen=NOW - 10 * S,
              a2b=Leg(syn=True, ack=True), b2a=Leg(syn=True, ack=True, opener=True)),
        Entry("address-text", Key(cb.UDP, a["t1"], 1, a["t2"], 2), flags=0, ts0=NOW - 3 * S,
              last_seen=NOW - 2 * S, a2b=Leg(bytes=1, packets=1, opener=True),
              tun_ip=a["t3"], orig_ip=a["t4"], orig_port=2, orig_sport=1, orig_sip=a["t2"]),
        # Calico's Key.Proto() is the u32's low byte: 0x106 is TCP for proto and tcp_state alike.
        Entry("proto-0x106", Key(0x106, a["pod"], 7, a["client"], 8), flags=0, ts0=NOW - 3 * S,
              last_seen=NOW - 2 * S, a2b=Leg(syn=True, ack=True, opener=True), b2a=Leg(syn=True, ack=True)),
        Entry("extremes", Key(cb.TCP, a["hi"], 65535, a["pod"], 65534), flags=0xFFFFFFFF & ~0x02,
              ts0=NOW, last_seen=NOW,
              a2b=Leg(bytes=2**64 - 1, packets=2**32 - 1, seqno=0xFFFFFFFF, syn=True, ack=True, approved=True,
                      opener=True, workload=True, ifindex=2**32 - 1, extra_bits=0x80 | 0x80000000),
              b2a=Leg(bytes=0, packets=0, seqno=0, extra_bits=0xFFFFFF00)),
    ]


# ----------------------------------------------------------------------------------------- oracle
def expected_row(e: Entry, layout: str, now_ns: int) -> dict:
    """Every public column for entry ``e`` decoded as ``layout`` (from the facts file and the brief)."""
    full = layout in ("v3", "v4")  # offset 0 is rst_seen (else created)
    word = e.flags if layout == "v4" else e.flags & 0xFFFF  # flags3/flags4 exist in v4 only
    k = e.key
    ba = bool(word & cb.FLAG_BA)
    row = {
        "proto": k.proto & 0xFF,
        "addr_a": cb.canon(k.addr_a), "port_a": k.port_a,
        "addr_b": cb.canon(k.addr_b), "port_b": k.port_b,
        "src": cb.canon(k.addr_b if ba else k.addr_a), "sport": k.port_b if ba else k.port_a,
        "dst": cb.canon(k.addr_a if ba else k.addr_b), "dport": k.port_a if ba else k.port_b,
        "type": TYPE_NAMES.get(e.type_, f"unknown({e.type_})"),
        "flags": word,
        "flag_names": cb.flag_names(word, layout),
        "last_seen_ns": e.last_seen,
        "rst_seen_ns": e.ts0 if full else None,
        "created_ns": None if full else e.ts0,
        "idle_s": (now_ns - e.last_seen) / 1e9,
    }
    has_legs = e.type_ in (cb.NORMAL, cb.NAT_REV)
    row["tcp_state"] = cb.tcp_state(word, e.a2b, e.b2a) if (has_legs and cb.is_tcp(k.proto)) else None
    for d, leg in (("a2b", e.a2b), ("b2a", e.b2a)):
        for f in LEG_FIELDS:
            val = getattr(leg, f) if has_legs else None
            if layout == "v2" and f in ("bytes", "packets"):
                val = None
            if f == "workload" and not cb.has_workload(layout):
                val = None
            row[f"{d}_{f}"] = val
    zero = "0.0.0.0" if k.family == 4 else "::"
    if has_legs:
        row.update(tun_ip=cb.canon(e.tun_ip or zero), orig_ip=cb.canon(e.orig_ip or zero),
                   orig_sip=cb.canon(e.orig_sip or zero), orig_port=e.orig_port, orig_sport=e.orig_sport)
    else:  # nat_fwd, or an unknown type whose body has no defined meaning (like its legs): null
        row.update(dict.fromkeys(NAT_COLS))
    if e.type_ == cb.NAT_FWD:
        r = e.rev_key
        row.update(rev_proto=r.proto & 0xFF, rev_addr_a=cb.canon(r.addr_a), rev_port_a=r.port_a,
                   rev_addr_b=cb.canon(r.addr_b), rev_port_b=r.port_b, nat_sport=e.nat_sport)
    else:
        row.update(dict.fromkeys(REV_COLS))
    assert set(row) == set(DTYPES), set(row) ^ set(DTYPES)
    return row


def same(got, want) -> bool:
    if want is None or got is None:
        return want is None and got is None
    if isinstance(want, float):
        return got == pytest.approx(want, rel=1e-12, abs=1e-9)
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is bool and got == want
    return got == want


def check_frame(df: pl.DataFrame, entries: list[Entry], layout: str, now_ns: int, where: str) -> None:
    """Assert every public column of ``df`` against the oracle; report all mismatches at once."""
    problems = []
    missing = [c for c in DTYPES if c not in df.columns]
    if missing:
        problems.append(f"missing columns: {missing}")
    for c, want in DTYPES.items():
        if c in df.columns and not dtype_ok(df.schema[c], want):
            problems.append(f"column {c}: dtype {df.schema[c]} != {want}")
    if df.height != len(entries):
        problems.append(f"{df.height} rows, expected {len(entries)}")
    present = [c for c in KEY_COLS if c in df.columns]
    rows = {}
    if len(present) == len(KEY_COLS):
        for r in df.to_dicts():
            rows[tuple(r[c] for c in KEY_COLS)] = r
    for e in entries:
        exp = expected_row(e, layout, now_ns)
        got = rows.get(tuple(exp[c] for c in KEY_COLS))
        if got is None:
            problems.append(f"[{e.label}] no row for key {e.key}")
            continue
        for c, want in exp.items():
            if c in got and not same(got[c], want):
                problems.append(f"[{e.label}] {c}: expected {want!r}, got {got[c]!r}")
    assert not problems, f"{where}: {len(problems)} mismatches:\n  " + "\n  ".join(problems)


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("layout", "family"), CASES, ids=CASE_IDS)
def test_every_column(make_ct_map, layout, family):
    m = make_ct_map(layout, family)
    entries = build_entries(family)
    pairs = [(e.key.pack(), e.value(layout, family)) for e in entries]
    assert len({k for k, _ in pairs}) == len(pairs), "test entries must have distinct keys"
    for (k, v), e in zip(pairs, entries):
        # the flags word in the bytes is what the oracle says a decoder of this layout sees
        assert cb.full_flags(v, layout) == (e.flags if layout == "v4" else e.flags & 0xFFFF)
    assert m.fill(pairs) == len(pairs)
    assert len(m.items()) == len(pairs)

    cm = ctscope.open_map(m.path, layout=layout)
    df = cm.to_polars(now_ns=NOW)
    check_frame(df, entries, layout, NOW, f"{layout} IPv{family} to_polars")

    d = cm.dump(now_ns=NOW)
    df2 = pl.DataFrame(d)
    assert d.layout == layout
    assert df2.sort(KEY_COLS).equals(df.sort(KEY_COLS))


@pytest.mark.parametrize(("layout", "family"), CASES, ids=CASE_IDS)
def test_every_column_next_key(make_ct_map, layout, family):
    """The GET_NEXT_KEY path decodes identically."""
    m = make_ct_map(layout, family)
    entries = build_entries(family)
    m.fill((e.key.pack(), e.value(layout, family)) for e in entries)
    d = ctscope.open_map(m.path, layout=layout).dump(method="next_key", now_ns=NOW)
    df = pl.DataFrame(d)
    assert d.method == "next_key"
    check_frame(df, entries, layout, NOW, f"{layout} IPv{family} next_key")


def test_idle_from_monotonic_clock(make_ct_map):
    """Without now_ns, idle_s is measured against CLOCK_MONOTONIC at dump time."""
    m = make_ct_map("v4", 4)
    a = addrs(4)
    before = bpfkernel.clock_monotonic_ns()
    last = before - 5 * S
    e = Entry("x", Key(cb.UDP, a["pod"], 1, a["pod2"], 2), last_seen=last, ts0=0)
    m.update(e.key.pack(), e.value("v4", 4))
    df = ctscope.open_map(m.path).to_polars()
    after = bpfkernel.clock_monotonic_ns()
    idle = df["idle_s"][0]
    assert (before - last) / 1e9 - 1e-6 <= idle <= (after - last) / 1e9 + 1e-6


# ------------------------------------------------------------------------------ detection, info
def _simple_entries(family: int, n: int, ts0_of) -> list[Entry]:
    a = addrs(family)
    out = []
    for i in range(n):
        last = NOW - (i + 1) * S
        e = Entry(f"e{i}", Key(cb.TCP, a["pod"], 1000 + i, a["pod2"], 80), ts0=ts0_of(last), last_seen=last,
                  a2b=Leg(syn=True, ack=True, opener=True), b2a=Leg(syn=True, ack=True))
        out.append(e)
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_auto_v4(make_ct_map, family):
    m = make_ct_map("v4", family, max_entries=4096)
    entries = _simple_entries(family, 20, lambda last: 0)
    m.fill((e.key.pack(), e.value("v4", family)) for e in entries)
    cm = ctscope.open_map(m.path)
    info = cm.info
    kinfo = bpfkernel.map_info(m.fd)
    assert info.map_type == "lru_hash"
    assert (info.key_size, info.value_size) == (cb.KEY_SIZE[family], cb.VALUE_SIZE[("v4", family)])
    assert info.max_entries == 4096
    assert info.map_flags == 0
    assert info.name == f"cali_v{family}_ct4"
    assert info.id == kinfo.id
    assert info.btf_id in (0, None)
    assert info.map_extra in (0, None)
    assert info.version == 4
    assert info.family == family
    d = cm.dump(now_ns=NOW)
    df = pl.DataFrame(d)
    assert d.layout == "v4"
    assert isinstance(d.layout_reason, str) and d.layout_reason
    check_frame(df, entries, "v4", NOW, "auto v4")


def test_auto_v2(make_ct_map):
    m = make_ct_map("v2", 4, max_entries=2048)
    entries = _simple_entries(4, 10, lambda last: last - 10 * S)
    m.fill((e.key.pack(), e.value("v2", 4)) for e in entries)
    cm = ctscope.open_map(m.path)
    assert cm.info.map_type == "hash"
    assert cm.info.map_flags == bpfkernel.BPF_F_NO_PREALLOC
    assert (cm.info.key_size, cm.info.value_size, cm.info.max_entries) == (16, 64, 2048)
    assert cm.info.name == "cali_v4_ct2"
    assert (cm.info.version, cm.info.family) == (2, 4)
    d = cm.dump(now_ns=NOW)
    df = pl.DataFrame(d)
    assert d.layout == "v2"
    check_frame(df, entries, "v2", NOW, "auto v2")


@pytest.mark.parametrize("family", [4, 6])
def test_auto_v3_created(make_ct_map, family):
    """ct3 whose offset 0 is non-zero and ≤ last_seen on every entry looks like Calico ≤ v3.29's `created`."""
    m = make_ct_map("v3-created", family)
    entries = _simple_entries(family, 30, lambda last: last - 7 * S)
    m.fill((e.key.pack(), e.value("v3-created", family)) for e in entries)
    cm = ctscope.open_map(m.path)
    assert (cm.info.version, cm.info.family, cm.info.map_type) == (3, family, "hash")
    assert cm.info.name == f"cali_v{family}_ct3"
    d = cm.dump(now_ns=NOW)
    df = pl.DataFrame(d)
    assert d.layout == "v3-created", d.layout_reason
    assert isinstance(d.layout_reason, str) and d.layout_reason
    check_frame(df, entries, "v3-created", NOW, "auto v3-created")
    assert df["created_ns"].null_count() == 0 and df["rst_seen_ns"].null_count() == df.height
    assert cm.to_polars(now_ns=NOW).sort(KEY_COLS).equals(df.sort(KEY_COLS))


@pytest.mark.parametrize("family", [4, 6])
def test_auto_v3_rst_seen(make_ct_map, family):
    """ct3 whose offset 0 is zero (no RST seen) is Calico v3.30's `rst_seen` meaning."""
    m = make_ct_map("v3", family)
    entries = _simple_entries(family, 30, lambda last: 0)
    m.fill((e.key.pack(), e.value("v3", family)) for e in entries)
    cm = ctscope.open_map(m.path)
    assert (cm.info.version, cm.info.family) == (3, family)
    d = cm.dump(now_ns=NOW)
    df = pl.DataFrame(d)
    assert d.layout == "v3", d.layout_reason
    check_frame(df, entries, "v3", NOW, "auto v3")
    assert df["created_ns"].null_count() == df.height and df["rst_seen_ns"].to_list() == [0] * df.height


def test_auto_v3_rst_seen_some_resets(make_ct_map):
    """Mostly zero offset 0 with a few non-zero rst_seen (RSTs seen) is still the v3.30 meaning."""
    m = make_ct_map("v3", 4)
    entries = _simple_entries(4, 30, lambda last: 0)
    for e in entries[:3]:
        e.ts0 = e.last_seen - S
        e.a2b = Leg(syn=True, ack=True, rst=True, opener=True)
    m.fill((e.key.pack(), e.value("v3", 4)) for e in entries)
    d = ctscope.open_map(m.path).dump(now_ns=NOW)
    df = pl.DataFrame(d)
    assert d.layout == "v3", d.layout_reason
    check_frame(df, entries, "v3", NOW, "auto v3 with resets")


@pytest.mark.parametrize(("have", "ask"), [
    (("v4", 4), "v2"), (("v4", 6), "v2"), (("v2", 4), "v4"), (("v2", 4), "v3"), (("v2", 4), "v3-created"),
])
def test_explicit_layout_that_does_not_fit(make_ct_map, have, ask):
    m = make_ct_map(*have)
    e = _simple_entries(have[1], 1, lambda last: 0)[0]
    m.update(e.key.pack(), e.value(*have))
    with pytest.raises(errors.NotACtMap):
        ctscope.open_map(m.path, layout=ask).to_polars(now_ns=NOW)
    with pytest.raises(errors.NotACtMap):
        ctscope.open_map(m.path).to_polars(layout=ask, now_ns=NOW)


def test_auto_on_non_ct_sizes_is_not_a_ct_map(make_map):
    m = make_map("plain", bpfkernel.HASH, 8, 8, 16)
    m.update(b"k" * 8, b"v" * 8)
    with pytest.raises(errors.NotACtMap):
        ctscope.open_map(m.path).to_polars(now_ns=NOW)


@pytest.mark.parametrize(("mtype", "ks", "vs", "name"), [
    (bpfkernel.HASH, 8, 8, "plain8"),
    (bpfkernel.LRU_HASH, 3, 5, "odd35"),
    (bpfkernel.HASH, 16, 88, "cali_v4_ct3"),
    (bpfkernel.LRU_HASH, 40, 128, "cali_v6_ct4"),
], ids=["hash-8-8", "lru-3-5", "ct3", "ct4-v6"])
def test_raw_layout(make_map, mtype, ks, vs, name):
    m = make_map(name, mtype, ks, vs, 512)
    pairs = {(bytes([i, 255 - i]) + bytes(range(1, ks + 1)))[:ks]: bytes([i]) * vs for i in range(100)}
    assert m.fill(pairs.items()) == len(pairs)
    d = ctscope.open_map(m.path, layout="raw").dump()
    df = pl.DataFrame(d)
    assert d.layout == "raw"
    assert df.columns[:2] == ["key", "value"]
    assert df.schema["key"] == pl.Binary and df.schema["value"] == pl.Binary
    got = dict(zip(df["key"].to_list(), df["value"].to_list()))
    assert df.height == len(pairs)
    assert got == pairs
    df2 = ctscope.open_map(m.path, layout="raw").to_polars()
    assert dict(zip(df2["key"].to_list(), df2["value"].to_list())) == pairs


def _ct_map(make_map, layout: str, family: int):
    """A Calico-shaped CT map pinned under a name of its own (several ct3 maps in one test)."""
    name, mtype, ks, vs, flags = __import__("conftest").ct_map_params(layout, family)
    return make_map(name, mtype, ks, vs, 64, flags, pin_name=f"{name}-{layout}")


def test_flags_padding_ignored_for_ct3_layouts(make_map, make_ct_map):
    """Bytes 18–19 are padding in ct3 maps (Calico ≤ v3.30: v3 `Value.Flags()` reads bytes 17 and 23
    only): v3-created and v3 must not report them (no `maglev`/`send-rst`); only v4 (v3.32's
    32-bit `Value.Flags()`) reads flags3/flags4."""
    a = addrs(4)
    e = Entry("pad", Key(cb.UDP, a["pod"], 5, a["pod2"], 6), flags=0x00030001 | 0x0100 | 0x80000000,
              ts0=NOW - 9 * S, last_seen=NOW - 8 * S)
    for layout in ("v3-created", "v3"):
        m = _ct_map(make_map, layout, 4)
        v = e.value(layout, 4)
        assert v[18] == 0x03 and v[19] == 0x80 and v[17] == 0x01 and v[23] == 0x01
        m.update(e.key.pack(), v)
        df = ctscope.open_map(m.path, layout=layout).to_polars(now_ns=NOW)
        assert df["flags"].to_list() == [0x0101], layout
        assert df["flag_names"].to_list() == [["nat-out", "B-A"]], layout
        # B-A comes from the 16-bit word: src/dst are swapped the same way
        assert (df["src"][0], df["sport"][0]) == (a["pod2"], 6)
    m = make_ct_map("v4", 4)
    m.update(e.key.pack(), e.value("v4", 4))
    new = ctscope.open_map(m.path, layout="v4").to_polars(now_ns=NOW)
    assert new["flags"].to_list() == [0x80030101]
    assert new["flag_names"].to_list() == [["nat-out", "B-A", "maglev", "send-rst", "0x80000000"]]
    assert new["rst_seen_ns"].to_list() == [NOW - 9 * S] and new["created_ns"].to_list() == [None]


def test_v3_created_leg_has_no_workload(make_map):
    """The leg's `workload` bit is a field from Calico v3.30 (v3.29's `Leg` has no Workload; the
    `workload:1` bitfield arrived in v3.30's conntrack_types.h): null for v3-created as for v2,
    a boolean for v3 and v4."""
    a = addrs(6)
    e = Entry("wl", Key(cb.TCP, a["pod"], 1, a["pod2"], 2), ts0=NOW - 9 * S, last_seen=NOW - 8 * S,
              a2b=Leg(syn=True, ack=True, opener=True, workload=True), b2a=Leg(syn=True, ack=True))
    for layout, want in (("v3-created", None), ("v3", True), ("v4", True)):
        m = _ct_map(make_map, layout, 6)
        v = e.value(layout, 6)
        assert struct.unpack_from("<I", v, 24 + 16)[0] & cb.LEG_WORKLOAD  # the bit is in the bytes
        m.update(e.key.pack(), v)
        df = ctscope.open_map(m.path, layout=layout).to_polars(now_ns=NOW)
        assert df["a2b_workload"].to_list() == [want], layout
        assert df["b2a_workload"].to_list() == [None if want is None else False], layout
        assert df["a2b_opener"].to_list() == [True] and df["tcp_state"].to_list() == ["ESTABLISHED"]


@pytest.mark.parametrize("layout", ["v2", "v3-created", "v3", "v4"])
def test_tcp_state_judges_the_protocols_low_byte(make_ct_map, layout):
    """Calico's `Key.Proto()` is `uint8(u32)` and its TCP state is shown when that is 6: a key
    with protocol 0x106 is TCP for `tcp_state` as it is for `proto`."""
    a = addrs(4)
    legs = dict(a2b=Leg(syn=True, ack=True, opener=True), b2a=Leg(syn=True, ack=True))
    tcp = Entry("0x106", Key(0x106, a["pod"], 1, a["pod2"], 2), last_seen=NOW - S, **legs)
    udp = Entry("0x111", Key(0x111, a["pod"], 3, a["pod2"], 4), last_seen=NOW - S, **legs)
    m = make_ct_map(layout, 4)
    m.fill((x.key.pack(), x.value(layout, 4)) for x in (tcp, udp))
    df = ctscope.open_map(m.path, layout=layout).to_polars(now_ns=NOW).sort("port_a")
    assert df["proto"].to_list() == [6, 17]
    assert df["tcp_state"].to_list() == ["ESTABLISHED", None]


@pytest.mark.parametrize(("layout", "names"), [
    ("v2", ["nat-out", "B-A", "0x200", "0x2000", "0x4000", "0x8000"]),
    ("v3-created", ["nat-out", "B-A", "host-psnat", "no-dsr", "0x4000", "0x8000"]),
    ("v3", ["nat-out", "B-A", "host-psnat", "no-dsr", "0x4000", "0x8000"]),
    ("v4", ["nat-out", "B-A", "host-psnat", "no-dsr", "no-redir-peer", "dscp"]),
])
def test_flag_labels_are_the_layouts_releases(make_ct_map, layout, names):
    """A flag bit is named only as the Calico release that wrote the layout names it (v2: v3.24+
    v2/map.go up to B-A; ct3: v3.26–v3.30 v3/map.go up to no-dsr; ct4: v3.31+): a bit the release
    never defined is shown in hex, not with a later release's meaning."""
    a = addrs(4)
    e = Entry("f", Key(cb.UDP, a["pod"], 1, a["pod2"], 2), flags=0x01 | 0x100 | 0x200 | 0x2000 | 0x4000 | 0x8000,
              last_seen=NOW - S)
    m = make_ct_map(layout, 4)
    m.update(e.key.pack(), e.value(layout, 4))
    df = ctscope.open_map(m.path, layout=layout).to_polars(now_ns=NOW)
    assert df["flags"].to_list() == [0xE301]
    assert df["flag_names"].to_list() == [names]
    assert names == cb.flag_names(0xE301, layout)


def test_maps_all_gives_no_version_to_other_map_types(make_map, make_ct_map, pin_dir):
    """Calico makes CT maps as HASH (ct2, ct3) or LRU_HASH (ct4) only: a (LRU_)PERCPU_HASH of
    CT sizes, even under a Calico name, is no CT version in `maps --all` or the API."""
    import json
    import subprocess
    import sys

    make_map("other", bpfkernel.PERCPU_HASH, 16, 88, 16)
    make_map("cali_v4_ct3", bpfkernel.PERCPU_HASH, 16, 88, 16, pin_name="percpu_named_ct3")
    make_map("cali_v6_ct4", bpfkernel.PERCPU_HASH, 40, 128, 16, pin_name="percpu_named_ct4")
    make_map("lru_percpu", 10, 16, 88, 16)  # BPF_MAP_TYPE_LRU_PERCPU_HASH
    ct3 = make_ct_map("v3", 4)
    ct4 = make_ct_map("v4", 6)
    p = subprocess.run([sys.executable, "-m", "ctscope", "maps", "--bpffs", str(pin_dir), "--all", "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = {os.path.basename(r["path"]): r for r in json.loads(p.stdout)}
    for name in ("other", "percpu_named_ct3", "percpu_named_ct4", "lru_percpu"):
        assert rows[name]["version"] is None and rows[name]["family"] is None, rows[name]
    assert (rows[ct3.path.name]["version"], rows[ct3.path.name]["family"]) == (3, 4)
    assert (rows[ct4.path.name]["version"], rows[ct4.path.name]["family"]) == (4, 6)
    assert ctscope.open_map(pin_dir / "percpu_named_ct3").info.version is None


# ------------------------------------------------------------------------------ property test
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)


def _addr_st(family):
    if family == 4:
        return st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i)))
    return st.one_of(st.integers(0, 2**128 - 1),
                     st.integers(0, 2**32 - 1).map(lambda i: (0xFFFF << 32) | i)  # IPv4-mapped
                     ).map(lambda i: str(ipaddress.IPv6Address(i)))


_leg_st = st.builds(Leg, bytes=st.integers(0, 2**64 - 1), packets=_u32, seqno=_u32, syn=st.booleans(),
                    ack=st.booleans(), fin=st.booleans(), rst=st.booleans(), approved=st.booleans(),
                    opener=st.booleans(), workload=st.booleans(), ifindex=_u32,
                    extra_bits=st.integers(0, 0x1FFFFFF).map(lambda x: x << 7))


@st.composite
def _entry_st(draw, family):
    key = Key(draw(st.sampled_from([cb.TCP, cb.UDP, cb.ICMP, cb.ICMP6, cb.SCTP, 0, 253, 255])),
              draw(_addr_st(family)), draw(_u16), draw(_addr_st(family)), draw(_u16))
    type_ = draw(st.sampled_from([cb.NORMAL, cb.NORMAL, cb.NAT_REV, cb.NAT_FWD, 3, 255]))
    last = draw(st.integers(0, NOW))
    e = Entry("h", key, type_=type_, flags=draw(_u32), ts0=draw(st.integers(0, 2**64 - 1)), last_seen=last)
    if type_ == cb.NAT_FWD:
        e.rev_key = Key(draw(st.integers(0, 255)), draw(_addr_st(family)), draw(_u16), draw(_addr_st(family)),
                        draw(_u16))
        e.nat_sport = draw(_u16)
    else:
        e.a2b, e.b2a = draw(_leg_st), draw(_leg_st)
        e.tun_ip, e.orig_ip, e.orig_sip = draw(_addr_st(family)), draw(_addr_st(family)), draw(_addr_st(family))
        e.orig_port, e.orig_sport = draw(_u16), draw(_u16)
    return e


_hyp_counter = iter(range(10**9))


@pytest.mark.parametrize(("layout", "family"), CASES, ids=CASE_IDS)
@settings(max_examples=25, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_entries_every_column(bpffs, layout, family, data):
    ents = data.draw(st.lists(_entry_st(family), min_size=1, max_size=40,
                              unique_by=lambda e: (e.key.proto & 0xFF, e.key.addr_a, e.key.port_a, e.key.addr_b,
                                                   e.key.port_b)))
    # the key's protocol is a u32 in the map but a u8 column: keep test protocols < 256
    name, mtype, ks, vs, flags = __import__("conftest").ct_map_params(layout, family)
    d = bpffs / f"hyp-{next(_hyp_counter)}"
    d.mkdir()
    path = d / name
    fd = bpfkernel.create_pinned(path, mtype, ks, vs, 1024, flags, name)
    try:
        bpfkernel.fill(fd, [(e.key.pack(), e.value(layout, family)) for e in ents])
        df = ctscope.open_map(path, layout=layout).to_polars(now_ns=NOW)
        check_frame(df, ents, layout, NOW, f"{layout} IPv{family} random")
    finally:
        os.close(fd)
        os.unlink(path)
        d.rmdir()
