"""Felix's conntrack cleanup table (felix/bpf/conntrack conntrack_test.go "expiry tests" and the
NAT cases of its scanner tests), each case written as raw bytes into a REAL pinned map at an age
relative to a reference `now_ns`, then judged by ctscope — every case also with the legs swapped.

Ages are relative to NOW (10 days of monotonic time), passed as now_ns: a freshly booted
machine's clock may be minutes old (facts §8). The table assumes Felix's DefaultTimeouts(), whose
TCPFinsSeen is 30 s, so it passes TCPFinsSeen=30s (the FelixConfiguration default is "Auto").
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import polars as pl
import pytest

import ctbytes as cb
from ctbytes import Key, Leg

import ctscope
from ctscope.analysis import expiry
from ctscope.analysis.timeouts import DEFAULTS_NS, Timeouts, felix_config_timeouts, format_duration, parse_go_duration, parse_spec
from ctscope.errors import BadArgument

S = 10**9
MIN = 60 * S
H = 3600 * S
NOW = 10 * 86_400 * S
FELIX_TABLE_TIMEOUTS = "TCPFinsSeen=30s"

SYN = Leg(syn=True)
SYN_ACK = Leg(syn=True, ack=True)
SYN_ACK_FIN = Leg(syn=True, ack=True, fin=True)
APPROVED = Leg(approved=True)
NONE = Leg()
GENERIC = 253


@dataclasses.dataclass
class Case:
    name: str
    proto: int
    a2b: Leg
    b2a: Leg
    age: int  # ns before NOW
    expired: bool
    reason: str | None = None  # Felix's reason, when expired
    flags: int = 0
    rst_seen_ago: int | None = None  # v3+/v4 value offset 0


# Felix's LivenessScanner table (conntrack_test.go), plus its RST rules.
NORMAL_CASES = [
    Case("TCP just created", cb.TCP, SYN, NONE, 1, False),
    Case("TCP handshake timeout", cb.TCP, SYN, NONE, 21 * S, True, expiry.R_PRE_ESTABLISHED),
    Case("TCP handshake timeout on response", cb.TCP, SYN, SYN_ACK, 21 * S, True, expiry.R_PRE_ESTABLISHED),
    Case("TCP established", cb.TCP, SYN_ACK, SYN_ACK, 1, False),
    Case("TCP established timed out", cb.TCP, SYN_ACK, SYN_ACK, 2 * H, True, expiry.R_ESTABLISHED),
    Case("TCP single fin", cb.TCP, SYN_ACK_FIN, SYN_ACK, 50 * MIN, False),
    Case("TCP single fin timed out", cb.TCP, SYN_ACK_FIN, SYN_ACK, 2 * H, True, expiry.R_ESTABLISHED),
    Case("TCP both fin", cb.TCP, SYN_ACK_FIN, SYN_ACK_FIN, 29 * S, False),
    Case("TCP both fin timed out", cb.TCP, SYN_ACK_FIN, SYN_ACK_FIN, 31 * S, True, expiry.R_FINS),
    Case("UDP just created", cb.UDP, NONE, NONE, 1, False),
    Case("UDP almost timed out", cb.UDP, APPROVED, NONE, 59 * S, False),
    Case("UDP timed out", cb.UDP, APPROVED, NONE, 61 * S, True, expiry.R_UDP),
    Case("Generic just created", GENERIC, NONE, NONE, 1, False),
    Case("Generic almost timed out", GENERIC, APPROVED, NONE, 599 * S, False),
    Case("Generic timed out", GENERIC, APPROVED, NONE, 601 * S, True, expiry.R_GENERIC),
    Case("icmp just created", cb.ICMP, NONE, NONE, 1, False),
    Case("icmp almost timed out", cb.ICMP, APPROVED, NONE, 4 * S, False),
    Case("icmp timed out", cb.ICMP, APPROVED, NONE, 6 * S, True, expiry.R_ICMP),
    # RST rules (timeouts.go): RST on a leg -> TCPResetSeen (40 s).
    Case("TCP RST 39 s", cb.TCP, SYN_ACK, Leg(syn=True, ack=True, rst=True), 39 * S, False),
    Case("TCP RST 41 s", cb.TCP, SYN_ACK, Leg(syn=True, ack=True, rst=True), 41 * S, True, expiry.R_RST),
    # DSR: a single FIN counts as "FINs seen"; one-legged flows count as long-lived.
    Case("TCP DSR single fin 31 s", cb.TCP, SYN_ACK_FIN, NONE, 31 * S, True, expiry.R_FINS, flags=cb.FLAG_DSR_FWD),
    Case("TCP DSR one leg 59 min", cb.TCP, SYN_ACK, NONE, 59 * MIN, False, flags=cb.FLAG_DSR_FWD),
]
# value.rst_seen (v3.30+): established flows with residual traffic after a RST get 120 s.
RST_SEEN_CASES = [
    Case("TCP rst_seen 119 s", cb.TCP, SYN_ACK, SYN_ACK, 119 * S, False, rst_seen_ago=200 * S),
    Case("TCP rst_seen 121 s", cb.TCP, SYN_ACK, SYN_ACK, 121 * S, True, expiry.R_RST_RESIDUAL, rst_seen_ago=200 * S),
]


@dataclasses.dataclass
class NatCase:
    name: str
    proto: int
    rev_a2b: Leg | None  # None: no rev entry at all
    rev_b2a: Leg | None
    rev_age: int
    fwd_age: int
    expired: bool
    rev_flags: int = 0


NAT_CASES = [
    NatCase("TCP NAT fwd 3h, rev 59 min", cb.TCP, SYN_ACK, SYN_ACK, 59 * MIN, 3 * H, False),
    NatCase("TCP NAT fwd 3h, rev 2h", cb.TCP, SYN_ACK, SYN_ACK, 2 * H, 3 * H, True),
    NatCase("TCP NAT DSR one leg, rev 59 min", cb.TCP, SYN_ACK, NONE, 59 * MIN, 3 * H, False, cb.FLAG_DSR_FWD),
    NatCase("TCP NAT DSR one leg, rev 2h", cb.TCP, SYN_ACK, NONE, 2 * H, 3 * H, True, cb.FLAG_DSR_FWD),
    NatCase("TCP NAT one leg without DSR, rev 59 min", cb.TCP, SYN_ACK, NONE, 59 * MIN, 3 * H, True),
    NatCase("NAT fwd without rev", cb.TCP, None, None, 0, 1 * S, True),
    NatCase("UDP NAT fwd 3h, rev 1 s", cb.UDP, APPROVED, NONE, 1 * S, 3 * H, False),
]

LAYOUTS = [("v4", 4), ("v4", 6), ("v3", 4)]


def addr(family: int, i: int, host: int) -> str:
    return f"10.{i // 250}.{i % 250}.{host}" if family == 4 else f"fd00::{i:x}:{host}"


def swapped(a: Leg, b: Leg, swap: bool) -> tuple[Leg, Leg]:
    return (b, a) if swap else (a, b)


def write_table(m, layout: str, family: int) -> tuple[dict, dict]:
    """Every case, with legs as given and swapped, into map `m`. Returns {(name, swap): key
    tuple} for normal entries and {(name, swap): (fwd key, rev key)} for NAT cases."""
    normal, nat = {}, {}
    i = 0
    cases = NORMAL_CASES + (RST_SEEN_CASES if layout != "v2" else [])
    for swap in (False, True):
        for c in cases:
            i += 1
            port = 0 if c.proto not in (cb.TCP, cb.UDP) else 1000 + i
            k = Key(c.proto, addr(family, i, 1), port, addr(family, i, 2), 80 if port else 0)
            a, b = swapped(c.a2b, c.b2a, swap)
            ts0 = NOW - c.rst_seen_ago if c.rst_seen_ago else 0
            m.update(k.pack(), cb.pack_value(layout, family, ts0=ts0, last_seen=NOW - c.age, flags=c.flags, a2b=a, b2a=b))
            normal[(c.name, swap)] = k
        for c in NAT_CASES:
            i += 1
            client, vip, backend = addr(family, i, 1), addr(family, i, 100), addr(family, i, 7)
            fwd = Key(c.proto, client, 30000 + i, vip, 80)
            rev = Key(c.proto, client, 30000 + i, backend, 8080)
            m.update(fwd.pack(), cb.pack_nat_fwd(layout, family, ts0=0, last_seen=NOW - c.fwd_age, rev_key=rev))
            if c.rev_a2b is not None:
                a, b = swapped(c.rev_a2b, c.rev_b2a, swap)
                m.update(rev.pack(), cb.pack_value(layout, family, ts0=0, last_seen=NOW - c.rev_age, type_=cb.NAT_REV,
                                                   flags=c.rev_flags, a2b=a, b2a=b, orig_ip=vip, orig_port=80))
            nat[(c.name, swap)] = (fwd, rev)
    return normal, nat


def verdicts(df: pl.DataFrame) -> dict[tuple, tuple[bool, str | None]]:
    return {(r["proto"], r["addr_a"], r["port_a"], r["addr_b"], r["port_b"]): (r["expired"], r["expire_reason"])
            for r in df.iter_rows(named=True)}


def key_tuple(k: Key) -> tuple:
    return (k.proto, cb.canon(k.addr_a), k.port_a, cb.canon(k.addr_b), k.port_b)


@pytest.mark.kernel
@pytest.mark.parametrize("layout,family", LAYOUTS, ids=[f"{lay}-ipv{fam}" for lay, fam in LAYOUTS])
def test_felix_cleanup_table(make_ct_map, layout, family):
    m = make_ct_map(layout, family)
    normal, nat = write_table(m, layout, family)
    df = ctscope.expired(str(m.path), all=True, now_ns=NOW, timeouts=FELIX_TABLE_TIMEOUTS, layout=layout)
    got = verdicts(df)
    assert len(got) == len(m.items())
    failures = []
    cases = NORMAL_CASES + RST_SEEN_CASES
    for (name, swap), k in normal.items():
        c = next(c for c in cases if c.name == name)
        exp, reason = got[key_tuple(k)]
        if exp != c.expired or (c.expired and reason != c.reason) or (not c.expired and reason is not None):
            failures.append(f"{name} (legs swapped={swap}): expired={exp} reason={reason!r}, want {c.expired} {c.reason!r}")
    for (name, swap), (fwd, rev) in nat.items():
        c = next(c for c in NAT_CASES if c.name == name)
        fexp, freason = got[key_tuple(fwd)]
        if fexp != c.expired:
            failures.append(f"{name} fwd (legs swapped={swap}): expired={fexp} ({freason!r}), want {c.expired}")
        if c.rev_a2b is None:
            assert freason == expiry.R_NO_REV
            continue
        rexp, rreason = got[key_tuple(rev)]
        if rexp != c.expired:
            failures.append(f"{name} rev (legs swapped={swap}): expired={rexp} ({rreason!r}), want {c.expired}")
        if c.expired:
            # The fwd entry is deleted because of its rev entry, for the rev entry's reason.
            assert freason == expiry.REV_PREFIX + rreason, (name, freason, rreason)
    assert not failures, "\n".join(failures)


@pytest.mark.kernel
def test_expired_lists_only_expired_and_cli_agrees(make_ct_map):
    m = make_ct_map("v4", 4)
    write_table(m, "v4", 4)
    api = ctscope.expired(str(m.path), now_ns=NOW, timeouts=FELIX_TABLE_TIMEOUTS)
    want = sum(c.expired for c in NORMAL_CASES + RST_SEEN_CASES) * 2 + sum(
        (1 + (c.rev_a2b is not None)) * c.expired for c in NAT_CASES) * 2
    assert api.height == want and api["expired"].all()
    p = subprocess.run([sys.executable, "-m", "ctscope", "expired", str(m.path), "--now-ns", str(NOW),
                        "--timeouts", FELIX_TABLE_TIMEOUTS, "-f", "ndjson"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == want
    assert f"{want:,} of {len(m.items()):,} entries expired" in p.stderr
    keys = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
    assert sorted(tuple(r[k] for k in keys) for r in rows) == sorted(api.select(keys).iter_rows())


@pytest.mark.kernel
def test_creation_grace_period_of_layouts_with_created(make_ct_map):
    """Felix ≤ 3.29 (value offset 0 = created) never expired entries younger than 10 s."""
    m = make_ct_map("v3-created", 4)
    young = Key(cb.UDP, "10.0.0.1", 1000, "10.0.0.2", 53)
    old = Key(cb.UDP, "10.0.0.3", 1000, "10.0.0.2", 53)
    # last_seen 61 s ago is past UDPTimeout; only `created` differs.
    m.update(young.pack(), cb.pack_value("v3-created", 4, ts0=NOW - 5 * S, last_seen=NOW - 61 * S))
    m.update(old.pack(), cb.pack_value("v3-created", 4, ts0=NOW - 11 * S, last_seen=NOW - 61 * S))
    got = verdicts(ctscope.expired(str(m.path), all=True, now_ns=NOW, layout="v3-created"))
    assert got[key_tuple(young)] == (False, None)
    assert got[key_tuple(old)] == (True, expiry.R_UDP)
    got = verdicts(ctscope.expired(str(m.path), all=True, now_ns=NOW, layout="v3-created",
                                   timeouts="CreationGracePeriod=0s"))
    assert got[key_tuple(young)][0] is True


@pytest.mark.kernel
def test_default_fins_timeout_is_auto(make_ct_map):
    """Without --timeouts, TCPFinsSeen is FelixConfiguration's default "Auto": the node's
    nf_conntrack_tcp_timeout_time_wait, or 30 s without it."""
    from ctscope.analysis.timeouts import read_sysctls

    auto = read_sysctls().get("nf_conntrack_tcp_timeout_time_wait", 30) * S
    m = make_ct_map("v4", 4)
    inside = Key(cb.TCP, "10.0.0.1", 1000, "10.0.0.2", 80)
    outside = Key(cb.TCP, "10.0.0.3", 1000, "10.0.0.2", 80)
    m.update(inside.pack(), cb.pack_value("v4", 4, ts0=0, last_seen=NOW - auto + S, a2b=SYN_ACK_FIN, b2a=SYN_ACK_FIN))
    m.update(outside.pack(), cb.pack_value("v4", 4, ts0=0, last_seen=NOW - auto - S, a2b=SYN_ACK_FIN, b2a=SYN_ACK_FIN))
    got = verdicts(ctscope.expired(str(m.path), all=True, now_ns=NOW))
    assert got[key_tuple(inside)] == (False, None)
    assert got[key_tuple(outside)] == (True, expiry.R_FINS)


def test_with_expiry_on_a_plain_frame_matches_felix_rules():
    """with_expiry works on any frame with the public schema (here: built by hand, no kernel)."""
    base = {
        "proto": 6, "addr_a": "10.0.0.1", "port_a": 1, "addr_b": "10.0.0.2", "port_b": 2, "type": "normal",
        "flags": 0, "last_seen_ns": NOW - 2 * H, "rst_seen_ns": 0, "created_ns": None,
        "rev_proto": None, "rev_addr_a": None, "rev_port_a": None, "rev_addr_b": None, "rev_port_b": None,
    }
    for leg in ("a2b", "b2a"):
        base.update({f"{leg}_syn": True, f"{leg}_ack": True, f"{leg}_fin": False, f"{leg}_rst": False})
    rows = [base, {**base, "port_a": 3, "last_seen_ns": NOW - 30 * MIN}]
    df = pl.DataFrame(rows, schema_overrides={"proto": pl.UInt8, "last_seen_ns": pl.UInt64, "rst_seen_ns": pl.UInt64,
                                              "created_ns": pl.UInt64, "flags": pl.UInt32})
    out = expiry.with_expiry(df, Timeouts.resolve(sysctls={}), NOW).collect()
    assert out["expired"].to_list() == [True, False]
    assert out["expire_reason"].to_list() == [expiry.R_ESTABLISHED, None]


# ----------------------------------------------------------------------------------- timeouts (no kernel)
@pytest.mark.parametrize("text,ns", [("20s", 20 * S), ("1h", H), ("1h30m", 90 * MIN), ("1.5h", 90 * MIN),
                                     ("500ms", S // 2), ("10m", 10 * MIN), ("0", 0), (".5s", S // 2),
                                     ("2us", 2000), ("3ns", 3)])
def test_go_durations(text, ns):
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1h-", "Auto", "1 h"])
def test_bad_go_durations(text):
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_spec_overrides_defaults_and_auto_reads_sysctls():
    t = Timeouts.resolve("TCPEstablished=2h, UDPTimeout=30s,TCPFinsSeen=Auto,ICMPTimeout=Auto,TCPResetSeen=Auto",
                         sysctls={"nf_conntrack_tcp_timeout_time_wait": 120, "nf_conntrack_icmp_timeout": 30})
    assert t["TCPEstablished"] == 2 * H and t["UDPTimeout"] == 30 * S
    assert t["TCPFinsSeen"] == 120 * S and t["ICMPTimeout"] == 30 * S
    assert t["TCPResetSeen"] == DEFAULTS_NS["TCPResetSeen"]  # Auto has no sysctl for it: Felix keeps the default
    assert t["TCPSynSent"] == 20 * S and t["GenericTimeout"] == 600 * S
    assert t.origins["TCPFinsSeen"] == "Auto: nf_conntrack_tcp_timeout_time_wait"
    # Without the sysctl (no nf_conntrack module), Auto falls back to Felix's 30 s.
    assert Timeouts.resolve(sysctls={})["TCPFinsSeen"] == 30 * S
    assert Timeouts.resolve(sysctls={})["TCPEstablished"] == H


def test_spec_errors_are_one_line_and_name_the_field():
    with pytest.raises(BadArgument, match="unknown timeout 'TCPBogus'"):
        Timeouts.resolve("TCPBogus=1s", sysctls={})
    with pytest.raises(BadArgument, match="UDPTimeout='soon'"):
        Timeouts.resolve("UDPTimeout=soon", sysctls={})
    with pytest.raises(BadArgument, match="NAME=VALUE"):
        parse_spec("UDPTimeout")


def test_effective_spec_round_trips():
    t = Timeouts.resolve("TCPEstablished=1h30m,ICMPTimeout=1.5s", sysctls={})
    assert Timeouts.resolve(t.spec(), sysctls={}).values == t.values
    assert format_duration(90 * MIN) == "1h30m" and format_duration(1500 * 10**6) == "1.5s"


FELIX_YAML = """\
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  bpfEnabled: true
  bpfConntrackTimeouts:
    tcpEstablished: 2h
    udpTimeout: 90s
    tcpFinsSeen: Auto
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: node.worker-1
spec:
  bpfConntrackTimeouts:
    udpTimeout: 10s
"""


def test_felix_configuration_file(tmp_path):
    f = tmp_path / "felix.yaml"
    f.write_text(FELIX_YAML)
    assert felix_config_timeouts(f) == {"TCPEstablished": "2h", "UDPTimeout": "90s", "TCPFinsSeen": "Auto"}
    t = Timeouts.resolve(felix_config=f, node="worker-1", sysctls={"nf_conntrack_tcp_timeout_time_wait": 45})
    assert (t["TCPEstablished"], t["UDPTimeout"], t["TCPFinsSeen"]) == (2 * H, 10 * S, 45 * S)
    # --timeouts wins over the file.
    assert Timeouts.resolve("UDPTimeout=5s", felix_config=f, sysctls={})["UDPTimeout"] == 5 * S
    # `kubectl get felixconfigurations -o json` (a List) works too.
    lst = {"apiVersion": "v1", "kind": "List", "items": [
        {"kind": "FelixConfiguration", "metadata": {"name": "default"},
         "spec": {"bpfConntrackTimeouts": {"icmpTimeout": "7s"}}}]}
    j = tmp_path / "felix.json"
    j.write_text(json.dumps(lst))
    assert Timeouts.resolve(felix_config=j, sysctls={})["ICMPTimeout"] == 7 * S


def test_felix_configuration_errors(tmp_path):
    f = tmp_path / "other.yaml"
    f.write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(BadArgument, match="no FelixConfiguration"):
        felix_config_timeouts(f)
    with pytest.raises(FileNotFoundError):
        felix_config_timeouts(tmp_path / "missing.yaml")


@pytest.mark.kernel
@pytest.mark.parametrize("layout", ["v3-created", "v4"])
def test_entries_of_unknown_type_are_kept(make_ct_map, layout):
    """Felix's LivenessScanner only warns about an unknown `type` byte ("Unknown conntrack entry
    type!", cleanup.go v3.24–v3.32; v3.30's BPF cleanup has no case for it): never expired."""
    m = make_ct_map(layout, 4)
    odd = Key(cb.UDP, "10.0.0.1", 1000, "10.0.0.2", 53)
    normal = Key(cb.UDP, "10.0.0.3", 1000, "10.0.0.2", 53)
    for k, t in ((odd, 7), (normal, cb.NORMAL)):
        m.update(k.pack(), cb.pack_value(layout, 4, ts0=NOW - 3 * H, last_seen=NOW - 2 * H, type_=t, a2b=APPROVED))
    got = verdicts(ctscope.expired(str(m.path), all=True, now_ns=NOW, layout=layout))
    assert got[key_tuple(odd)] == (False, None)
    assert got[key_tuple(normal)] == (True, expiry.R_UDP)


@pytest.mark.kernel
def test_nat_fwd_grace_is_its_rev_entrys(make_ct_map):
    """Felix ≤ 3.29 judges a NAT fwd entry with `EntryExpired(revEntry)`, whose creation grace
    reads the rev entry's `created`; a fwd entry without a rev entry is deleted at once."""
    m = make_ct_map("v3-created", 4)
    fwd = Key(cb.UDP, "10.0.0.1", 40000, "10.96.0.10", 53)
    rev = Key(cb.UDP, "10.0.0.1", 40000, "10.65.0.7", 53)
    orphan = Key(cb.UDP, "10.0.0.5", 40000, "10.96.0.10", 53)
    young, old = NOW - 2 * S, NOW - 3 * H
    m.update(fwd.pack(), cb.pack_nat_fwd("v3-created", 4, ts0=young, last_seen=NOW - 2 * H, rev_key=rev))
    m.update(rev.pack(), cb.pack_value("v3-created", 4, ts0=old, last_seen=NOW - 2 * H, type_=cb.NAT_REV,
                                       a2b=APPROVED, orig_ip="10.96.0.10", orig_port=53))
    m.update(orphan.pack(), cb.pack_nat_fwd("v3-created", 4, ts0=young, last_seen=young,
                                            rev_key=Key(cb.UDP, "10.0.0.5", 40000, "10.65.0.9", 53)))
    got = verdicts(ctscope.expired(str(m.path), all=True, now_ns=NOW, layout="v3-created"))
    assert got[key_tuple(rev)] == (True, expiry.R_UDP)
    assert got[key_tuple(fwd)] == (True, expiry.REV_PREFIX + expiry.R_UDP)
    assert got[key_tuple(orphan)] == (True, expiry.R_NO_REV)
