"""stats / expired / top / query / diff / metrics / snapshots on real pinned maps.

Expected figures are computed here independently of ctscope: from the map's raw bytes (read
with the tests' own bpf(2) wrapper) decoded by the offsets of the facts file, and Felix's rules
written out per entry in plain Python.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import bpfkernel
import ctbytes as cb
from ctbytes import Key, Leg

import ctscope
from ctscope.cli.synth import synth
from ctscope.errors import BadArgument, SnapshotError

pytestmark = pytest.mark.kernel

S = 10**9
NOW = 5 * 86_400 * S  # reference monotonic time (ahead of a freshly booted clock)
TIMEOUTS = "TCPFinsSeen=30s"  # fixed, so results do not depend on this host's sysctls
T = {"TCPSynSent": 20 * S, "TCPEstablished": 3600 * S, "TCPFinsSeen": 30 * S, "TCPResetSeen": 40 * S,
     "UDPTimeout": 60 * S, "GenericTimeout": 600 * S, "ICMPTimeout": 5 * S}
KEY = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
IDLE_EDGES = [1, 5, 20, 60, 600, 3600, 6 * 3600, 86400]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "ctscope", *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"ctscope {' '.join(map(str, args))} exited {p.returncode}: {p.stderr}")
    return p


# ----------------------------------------------------------------------------------------- oracle
def raw_entries(pin) -> dict[bytes, dict]:
    """Every entry's fields that matter here, decoded from raw bytes (facts §2-§4, v3/v4 IPv4)."""
    fd = bpfkernel.obj_get(pin, bpfkernel.BPF_F_RDONLY)
    try:
        items = bpfkernel.items(fd)
    finally:
        import os

        os.close(fd)
    out = {}
    for k, v in items.items():
        ts0, last_seen = struct.unpack_from("<QQ", v, 0)
        out[k] = {
            "proto": struct.unpack_from("<I", k, 0)[0] & 0xFF,
            "type": v[16],
            "flags": v[17] | v[23] << 8 | v[18] << 16 | v[19] << 24,
            "rst_seen": ts0,
            "last_seen": last_seen,
            "a": struct.unpack_from("<I", v, 24 + 16)[0],
            "b": struct.unpack_from("<I", v, 48 + 16)[0],
            "rev": bytes(v[24:24 + len(k)]) if v[16] == cb.NAT_FWD else None,
        }
    return out


def felix_expired(e: dict, proto: int, now: int) -> bool:
    """timeouts.go EntryExpired, written out for one entry."""
    age = now - e["last_seen"]
    bit = lambda w, b: bool(w & b)  # noqa: E731
    if proto == cb.TCP:
        dsr = bool(e["flags"] & cb.FLAG_DSR_FWD)
        a, b = e["a"], e["b"]
        if (bit(a, cb.LEG_RST) or bit(b, cb.LEG_RST)) and age > T["TCPResetSeen"]:
            return True
        fins = (bit(a, cb.LEG_FIN) or bit(b, cb.LEG_FIN)) if dsr else (bit(a, cb.LEG_FIN) and bit(b, cb.LEG_FIN))
        if fins and age > T["TCPFinsSeen"]:
            return True
        est = all(bit(x, cb.LEG_SYN) and bit(x, cb.LEG_ACK) for x in (a, b))
        if est or dsr:
            return (e["rst_seen"] != 0 and age > 120 * S) or age > T["TCPEstablished"]
        return age > T["TCPSynSent"]
    if proto in (cb.ICMP, cb.ICMP6):
        return age > T["ICMPTimeout"]
    if proto == cb.UDP:
        return age > T["UDPTimeout"]
    return age > T["GenericTimeout"]


def oracle_expired(entries: dict[bytes, dict], now: int) -> set[bytes]:
    out = set()
    for k, e in entries.items():
        if e["type"] == cb.NAT_FWD:
            rev = entries.get(e["rev"])
            if rev is None or felix_expired(rev, e["proto"], now):
                out.add(k)
        elif felix_expired(e, e["proto"], now):
            out.add(k)
    return out


def calico_state(e: dict) -> str:
    bit = lambda w, b: bool(w & b)  # noqa: E731
    a, b = e["a"], e["b"]
    dsr = bool(e["flags"] & cb.FLAG_DSR_FWD)
    fins = (bit(a, cb.LEG_FIN) or bit(b, cb.LEG_FIN)) if dsr else (bit(a, cb.LEG_FIN) and bit(b, cb.LEG_FIN))
    if fins:
        return "CLOSED"
    if bit(a, cb.LEG_RST) or bit(b, cb.LEG_RST):
        return "RESET"
    if all(bit(x, cb.LEG_SYN) and bit(x, cb.LEG_ACK) for x in (a, b)):
        return "ESTABLISHED"
    return "SYN-SENT"


def key_tuple(k: bytes) -> tuple:
    key = cb.unpack_key(k)
    return (key.proto, cb.canon(key.addr_a), key.port_a, cb.canon(key.addr_b), key.port_b)


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth_pin(bpffs):
    d = bpffs / "analysis" / "tc" / "globals"
    d.mkdir(parents=True)
    pin = d / "cali_v4_ct4"
    synth(str(pin), 20_000, max_entries=32_768, seed=11, now_ns=NOW)
    return pin


@pytest.fixture(scope="module")
def raw(synth_pin):
    return raw_entries(synth_pin)


@pytest.fixture(scope="module")
def snapshots(synth_pin, tmp_path_factory):
    """The synth map as a parquet snapshot (`snapshot -o`) and an Arrow one (`dump -o`)."""
    d = tmp_path_factory.mktemp("snaps")
    pq, ar = d / "s.parquet", d / "s.arrow"
    run("snapshot", synth_pin, "-o", pq, "--now-ns", NOW)
    run("dump", synth_pin, "-o", ar, "--now-ns", NOW)
    return {"parquet": pq, "arrow": ar}


# ----------------------------------------------------------------------------------------- stats
@pytest.mark.parametrize("path", ["whole", "chunked"])
def test_stats_match_independent_counts(synth_pin, raw, path, monkeypatch):
    """Both ways stats judges a live pin: dumped whole (maps of up to WHOLE_QUERY_ROWS
    max_entries), and chunk by chunk (larger maps; here in chunks of 4,096 rows)."""
    if path == "chunked":
        from ctscope.analysis import chunked
        from ctscope.analysis import stats as stats_mod

        monkeypatch.setattr(stats_mod, "WHOLE_QUERY_ROWS", 0)
        monkeypatch.setattr(chunked, "CHUNK_ROWS", 4096)
        monkeypatch.setattr(chunked._regroup, "__defaults__", (4096,))
    st = ctscope.stats(str(synth_pin), now_ns=NOW, timeouts=TIMEOUTS)
    conns = {k: e for k, e in raw.items() if e["type"] != cb.NAT_FWD}
    tcp = [e for e in conns.values() if e["proto"] == cb.TCP]
    states = Counter(calico_state(e) for e in tcp)
    expired = oracle_expired(raw, NOW)
    assert st["map_size"] == 32_768
    assert st["total_entries"] == len(raw) == 20_000
    assert st["nat_connections"] == sum(e["type"] == cb.NAT_FWD for e in raw.values()) > 0
    assert st["total_connections"] == len(conns)
    assert st["tcp"] == len(tcp)
    assert st["udp"] == sum(e["proto"] == cb.UDP for e in conns.values())
    assert st["others"] == len(conns) - st["tcp"] - st["udp"] > 0
    assert (st["tcp_established"], st["tcp_closed"], st["tcp_reset"], st["tcp_syn_sent"]) == (
        states["ESTABLISHED"], states["CLOSED"], states["RESET"], states["SYN-SENT"])
    assert st["by_type"] == {"normal": sum(e["type"] == cb.NORMAL for e in raw.values()),
                             "nat_fwd": st["nat_connections"],
                             "nat_rev": sum(e["type"] == cb.NAT_REV for e in raw.values())}
    protos = Counter(e["proto"] for e in raw.values())
    assert {int(p) if p.isdigit() else {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "gre": 47}[p]: n
            for p, n in st["by_protocol"].items()} == dict(protos)
    assert st["expired"] == len(expired) > 0
    assert st["fill_ratio"] == pytest.approx(20_000 / 32_768)
    assert st["fill_ratio_after_sweep"] == pytest.approx((20_000 - len(expired)) / 32_768)
    idle = Counter(sum((NOW - e["last_seen"]) / S >= edge for edge in IDLE_EDGES) for e in raw.values())
    assert [b["entries"] for b in st["idle_histogram"]] == [idle.get(i, 0) for i in range(len(IDLE_EDGES) + 1)]


def test_stats_cli_text_and_json(synth_pin, raw):
    p = run("stats", synth_pin, "--now-ns", NOW, "--timeouts", TIMEOUTS)
    conns = sum(e["type"] != cb.NAT_FWD for e in raw.values())
    # calico-node's own lines come first, worded as calico-node prints them.
    assert f"Conntrack map size: 32768\nTotal connections: {conns}\nTotal entries: 20000\n" in p.stdout
    assert "Idle time (since last traffic):" in p.stdout and "█" in p.stdout
    j = json.loads(run("stats", synth_pin, "--now-ns", NOW, "--timeouts", TIMEOUTS, "--json").stdout)
    assert j["total_connections"] == conns and j["expired"] == len(oracle_expired(raw, NOW))


def test_where_narrows_every_command(synth_pin, raw):
    udp = {k for k, e in raw.items() if e["proto"] == cb.UDP}
    w = "proto = 17"
    st = ctscope.stats(str(synth_pin), now_ns=NOW, timeouts=TIMEOUTS, where=w)
    assert st["total_entries"] == len(udp) and st["tcp"] == 0
    assert st["expired"] == len(oracle_expired(raw, NOW) & udp)
    assert ctscope.expired(str(synth_pin), now_ns=NOW, timeouts=TIMEOUTS, where=w).height == st["expired"]
    assert ctscope.top(str(synth_pin), by="proto", where=w)["entries"].to_list() == [len(udp)]
    q = run("query", synth_pin, "SELECT count(*) AS n FROM ct", "--where", w, "-f", "json")
    assert json.loads(q.stdout) == [{"n": len(udp)}]
    m = run("metrics", synth_pin, "--now-ns", NOW, "--where", w).stdout
    assert 'protocol="udp"} ' + str(len(udp)) in m and 'protocol="tcp"' not in m
    # A NAT fwd entry is judged by its rev entry even when --where keeps only fwd entries.
    fwd = ctscope.expired(str(synth_pin), now_ns=NOW, timeouts=TIMEOUTS, where="type = 'nat_fwd'", all=True)
    want = {key_tuple(k) for k in oracle_expired(raw, NOW) if raw[k]["type"] == cb.NAT_FWD}
    assert {r for r in fwd.filter(pl.col("expired")).select(KEY).iter_rows()} == want
    assert fwd.filter(pl.col("expire_reason") == "no reverse NAT entry").height == 0


def test_bad_where_fails_before_reading(synth_pin):
    p = run("stats", synth_pin, "--where", "no_such_column = 1", check=False)
    assert p.returncode == 2 and p.stderr.startswith("ctscope: error: --where") and p.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------- expired
def test_expired_matches_oracle(synth_pin, raw):
    df = ctscope.expired(str(synth_pin), now_ns=NOW, timeouts=TIMEOUTS)
    assert {r for r in df.select(KEY).iter_rows()} == {key_tuple(k) for k in oracle_expired(raw, NOW)}
    assert df["expire_reason"].null_count() == 0


# ----------------------------------------------------------------------------------------- top / query
def test_top_by_source_and_service(synth_pin):
    df = ctscope.read(str(synth_pin), now_ns=NOW)
    want = df.group_by("src").len().sort(["len", "src"], descending=[True, False]).head(5)
    got = ctscope.top(str(synth_pin), by="src", n=5)
    assert got["src"].to_list() == want["src"].to_list() and got["entries"].to_list() == want["len"].to_list()
    assert got["share"][0] == pytest.approx(want["len"][0] / df.height)
    rev = df.filter(pl.col("type") == "nat_rev").with_columns(
        (pl.col("a2b_bytes") + pl.col("b2a_bytes")).alias("b"))
    svc = rev.group_by("proto", "orig_ip", "orig_port").agg(pl.col("b").sum()).sort("b", descending=True).head(3)
    got = ctscope.top(str(synth_pin), by="service", metric="bytes", n=3)
    assert got.select("proto", "orig_ip", "orig_port", "bytes").rows() == svc.rows()
    p = run("top", synth_pin, "--by", "dport", "--metric", "packets", "-n", "3", "-f", "csv")
    assert p.stdout.splitlines()[0] == "proto,dport,entries,bytes,packets,share"
    with pytest.raises(BadArgument, match="--by 'nope'"):
        ctscope.top(str(synth_pin), by="nope")


def test_query_sql_over_ct(synth_pin, raw):
    p = run("query", synth_pin, "SELECT type, count(*) AS n FROM ct GROUP BY type ORDER BY type", "-f", "json",
            "--now-ns", NOW, "--timeouts", TIMEOUTS)
    want = Counter({0: "normal", 1: "nat_fwd", 2: "nat_rev"}[e["type"]] for e in raw.values())
    assert {r["type"]: r["n"] for r in json.loads(p.stdout)} == dict(want)
    p = run("query", synth_pin, "SELECT count(*) AS n FROM ct WHERE expired", "-f", "json", "--now-ns", NOW,
            "--timeouts", TIMEOUTS)
    assert json.loads(p.stdout) == [{"n": len(oracle_expired(raw, NOW))}]
    # The default SOURCE (the live pin under --bpffs) with just the SQL.
    bpffs_root = synth_pin.parent.parent.parent
    p = run("query", "SELECT count(*) AS n FROM ct", "--bpffs", bpffs_root, "-f", "json")
    assert json.loads(p.stdout) == [{"n": 20_000}]
    # CSV has no lists: flag names come out joined with "|", as in dump's CSV
    p = run("query", synth_pin, "SELECT flags, flag_names FROM ct WHERE flags > 0 ORDER BY flags DESC LIMIT 3",
            "-f", "csv")
    lines = p.stdout.splitlines()
    assert lines[0] == "flags,flag_names" and len(lines) == 4
    names = {r["flags"]: "|".join(r["flag_names"]) for r in ctscope.read(str(synth_pin)).iter_rows(named=True)}
    assert all(names[int(f)] == joined and "|" in joined for f, joined in (line.split(",", 1) for line in lines[1:]))
    bad = run("query", synth_pin, "SELEC nonsense", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("ctscope: error: SQL") and bad.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------- snapshots
FIGURES = ["map_size", "total_connections", "total_entries", "nat_connections", "tcp", "udp", "others",
           "tcp_established", "tcp_closed", "tcp_reset", "tcp_syn_sent", "expired", "fill_ratio",
           "fill_ratio_after_sweep", "by_type", "by_protocol", "by_state", "expired_by_reason", "idle_histogram",
           "timeouts", "map_name", "max_entries", "layout", "now_ns"]


@pytest.mark.parametrize("chunk_rows", [None, 4096])
def test_live_parquet_and_arrow_give_identical_answers(synth_pin, snapshots, chunk_rows, monkeypatch):
    """Large files are judged chunk by chunk; in chunks of 4,096 rows a NAT fwd entry's rev
    entry is mostly in another chunk than its own."""
    if chunk_rows:
        from ctscope.analysis import chunked
        from ctscope.analysis import stats as stats_mod

        monkeypatch.setattr(stats_mod, "WHOLE_QUERY_ROWS", 0)
        monkeypatch.setattr(chunked, "CHUNK_ROWS", chunk_rows)
    live = ctscope.stats(str(synth_pin), now_ns=NOW, timeouts=TIMEOUTS)
    exp_live = ctscope.expired(str(synth_pin), now_ns=NOW, timeouts=TIMEOUTS, all=True).sort(KEY)
    for kind, path in snapshots.items():
        st = ctscope.stats(str(path), timeouts=TIMEOUTS)  # the snapshot's own reference time
        assert {k: st[k] for k in FIGURES} == {k: live[k] for k in FIGURES}, kind
        assert st["kind"] == kind
        exp = ctscope.expired(str(path), timeouts=TIMEOUTS, all=True).sort(KEY)
        assert exp.equals(exp_live), kind


def test_snapshot_metadata_in_both_formats(snapshots, synth_pin):
    from ctscope.analysis import snapshot_metadata

    for kind, path in snapshots.items():
        meta = snapshot_metadata(path)
        assert meta["entries"] == 20_000 and meta["now_ns"] == NOW and meta["max_entries"] == 32_768, kind
        assert meta["map_path"] == str(synth_pin) and meta["map_name"] == "cali_v4_ct4"
        assert meta["dump_end_wall_ns"] >= meta["dump_start_wall_ns"] > meta["boot_wall_ns"] > 0
        assert meta["layout"] == "v4" and meta["hostname"] and meta["ctscope_version"]
        assert isinstance(meta["nf_conntrack_sysctls"], dict)


def test_snapshot_format_follows_the_suffix_and_records_an_absolute_path(synth_pin, tmp_path, monkeypatch):
    from ctscope.analysis import snapshot_metadata

    monkeypatch.chdir(synth_pin.parent)
    for name, magic in (("s.arrow", b"ARROW1"), ("s.parquet", b"PAR1"), ("s.ipc", b"ARROW1")):
        run("snapshot", synth_pin.name, "-o", tmp_path / name, "--now-ns", NOW)
        assert (tmp_path / name).read_bytes()[:len(magic)] == magic, name
        meta = snapshot_metadata(tmp_path / name)
        assert meta["map_path"] == str(synth_pin) and meta["entries"] == 20_000
    run("snapshot", synth_pin.name, "-o", tmp_path / "forced.arrow", "-f", "parquet")
    assert (tmp_path / "forced.arrow").read_bytes()[:4] == b"PAR1"  # an explicit --format wins


def test_read_and_scan(snapshots, synth_pin):
    live = ctscope.read(str(synth_pin), now_ns=NOW).sort(KEY)
    assert ctscope.read(str(snapshots["parquet"])).sort(KEY).equals(live)
    lf = ctscope.scan(str(snapshots["arrow"]))
    assert isinstance(lf, pl.LazyFrame)
    assert lf.filter(pl.col("proto") == 6).select(pl.len()).collect().item() == live.filter(pl.col("proto") == 6).height


def test_now_ns_overrides_a_snapshots_reference(snapshots):
    later = NOW + 7200 * S
    st = ctscope.stats(str(snapshots["parquet"]), now_ns=later, timeouts=TIMEOUTS)
    df = ctscope.read(str(snapshots["parquet"]), now_ns=later)
    assert df["idle_s"].min() >= 7200 and st["now_ns"] == later
    # Two hours on, every entry is past even TCPEstablished (1 h).
    assert st["expired"] == st["total_entries"]


@pytest.mark.parametrize("kind,damage", [("parquet", "truncate"), ("parquet", "garbage"), ("arrow", "truncate"),
                                         ("arrow", "garbage"),
                                         # parquet pages carry no checksum polars writes (known limit)
                                         ("arrow", "bit-flips")])
def test_damaged_snapshot_is_a_one_line_exit_2(snapshots, tmp_path, kind, damage):
    data = snapshots[kind].read_bytes()
    bad = tmp_path / f"bad.{kind}"
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "bit-flips":  # 2000 bytes in the middle XORed: structure intact, values wrong
        mid = len(data) // 2
        bad.write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 2000]) + data[mid + 2000:])
    else:  # keep the footer, scribble over the data
        mid = len(data) // 3
        bad.write_bytes(data[:mid] + bytes([0xA5]) * (len(data) // 3) + data[mid + len(data) // 3:])
    p = run("stats", bad, check=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("ctscope: error: ") and str(bad) in p.stderr and p.stderr.count("\n") == 1
    with pytest.raises(SnapshotError):
        ctscope.stats(str(bad))


def test_not_a_snapshot_and_missing(tmp_path):
    plain = tmp_path / "plain.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(plain)
    p = run("stats", plain, check=False)
    assert p.returncode == 2 and "not a ctscope snapshot" in p.stderr and p.stderr.count("\n") == 1
    p = run("stats", tmp_path / "missing.parquet", check=False)
    assert p.returncode == 3 and p.stderr.count("\n") == 1
    p = run("stats", tmp_path / "nothing" / "*.parquet", check=False)
    assert p.returncode == 3


# ----------------------------------------------------------------------------------------- many nodes
def small_map(make_ct_map):
    m = make_ct_map("v4", 4)
    client, vip, backend = "10.0.0.1", "10.96.0.10", "10.1.0.5"
    rev = Key(cb.TCP, client, 40000, backend, 8080)
    fwd = Key(cb.TCP, client, 40000, vip, 80)
    est = Leg(syn=True, ack=True, bytes=1000, packets=10)
    m.update(rev.pack(), cb.pack_value("v4", 4, ts0=0, last_seen=NOW - 10 * S, type_=cb.NAT_REV, a2b=est, b2a=est,
                                       orig_ip=vip, orig_port=80))
    m.update(fwd.pack(), cb.pack_nat_fwd("v4", 4, ts0=0, last_seen=NOW - 3600 * S, rev_key=rev))
    for i in range(10):
        k = Key(cb.UDP, f"10.0.1.{i}", 5000 + i, "10.0.2.1", 53)
        m.update(k.pack(), cb.pack_value("v4", 4, ts0=0, last_seen=NOW - i * 10 * S, a2b=Leg(bytes=i, packets=1)))
    return m, fwd, rev


def test_hive_partitioned_snapshots_of_many_nodes(make_ct_map, tmp_path):
    m, fwd, rev = small_map(make_ct_map)
    root = tmp_path / "fleet"
    a = Path(run("snapshot", m.path, "--dir", root, "--node", "node-a", "--now-ns", NOW).stdout.strip())
    m.delete(rev.pack())  # node-b's map has the fwd entry but lost its rev entry
    b = Path(run("snapshot", m.path, "--dir", root, "--node", "node-b", "--now-ns", NOW, "-f", "arrow").stdout.strip())
    for path, node in ((a, "node-a"), (b, "node-b")):
        rel = path.relative_to(root).parts
        assert rel[0] == f"node={node}" and rel[1].startswith("date=20") and path.exists()
    lf = ctscope.scan(str(root))
    schema = lf.collect_schema()
    assert schema["node"] == pl.String and schema["date"] == pl.Date and "snapshot" in schema
    per_node = dict(lf.group_by("node").len().collect(engine="streaming").iter_rows())
    assert per_node == {"node-a": 12, "node-b": 11}
    # Each snapshot's fwd entry is judged by the rev entry of the same snapshot only.
    e = ctscope.expired(str(root), all=True, timeouts=TIMEOUTS, where="type = 'nat_fwd'")
    verdict = {r["node"]: (r["expired"], r["expire_reason"]) for r in e.iter_rows(named=True)}
    assert verdict == {"node-a": (False, None), "node-b": (True, "no reverse NAT entry")}
    st = ctscope.stats(str(root), timeouts=TIMEOUTS)
    assert st["snapshot_count"] == 2 and st["total_entries"] == 23 and st["map_size"] == 2 * 1024
    assert [s["node"] for s in st["snapshots"]] == ["node-a", "node-b"]
    assert [s["total_entries"] for s in st["snapshots"]] == [12, 11]
    # A glob selects files; the CLI reads directories too.
    assert ctscope.stats(str(root / "node=node-a" / "**" / "*.parquet"), timeouts=TIMEOUTS)["total_entries"] == 12
    top = json.loads(run("top", root, "--by", "node", "-f", "json").stdout)
    assert [(r["node"], r["entries"]) for r in top] == [("node-a", 12), ("node-b", 11)]
    assert "2 snapshots from 2 node(s)" in run("stats", root).stdout


def test_one_node_dataset_has_the_fleet_columns(make_ct_map, tmp_path):
    """A directory holding a single node's single snapshot has node/date/snapshot columns,
    as a fleet's does, so the same queries run on both."""
    m, _, _ = small_map(make_ct_map)
    root = tmp_path / "fleet"
    run("snapshot", m.path, "--dir", root, "--node", "node-a", "--now-ns", NOW)
    q = ctscope.query("SELECT node, date, count(*) AS n FROM ct GROUP BY node, date", str(root))
    assert q["node"].to_list() == ["node-a"] and q["n"].to_list() == [12] and q.schema["date"] == pl.Date
    out = run("query", root, "SELECT node, count(*) AS n FROM ct GROUP BY node", "-f", "json").stdout
    assert json.loads(out) == [{"node": "node-a", "n": 12}]


# ----------------------------------------------------------------------------------------- diff
def test_diff_of_two_real_dumps(make_ct_map, tmp_path):
    m = make_ct_map("v4", 4)
    keys = [Key(cb.TCP, "10.0.0.1", 10000 + i, "10.0.0.2", 443) for i in range(20)]

    def put(k: Key, i: int, extra_bytes: int = 0, extra_packets: int = 0, ago: int = 100 * S) -> None:
        leg = Leg(syn=True, ack=True, bytes=1000 * i + extra_bytes, packets=i + extra_packets)
        m.update(k.pack(), cb.pack_value("v4", 4, ts0=0, last_seen=NOW - ago, a2b=leg, b2a=Leg(syn=True, ack=True)))

    for i, k in enumerate(keys):
        put(k, i + 1)
    old = tmp_path / "old.parquet"
    run("snapshot", m.path, "-o", old, "--now-ns", NOW)
    gone, changed, recreated = keys[:2], keys[2:6], keys[6]
    for k in gone:
        m.delete(k.pack())
    for j, k in enumerate(changed):
        put(k, keys.index(k) + 1, extra_bytes=500 * (j + 1), extra_packets=5, ago=99 * S)
    put(recreated, 0, extra_bytes=7, extra_packets=1, ago=1 * S)  # counters restarted
    new_keys = [Key(cb.UDP, "10.0.9.9", 20000 + i, "10.0.0.53", 53) for i in range(3)]
    for k in new_keys:
        m.update(k.pack(), cb.pack_value("v4", 4, ts0=0, last_seen=NOW, a2b=Leg(bytes=64, packets=1)))
    new = tmp_path / "new.arrow"
    run("snapshot", m.path, "-o", new, "--now-ns", NOW, "-f", "arrow")

    d = ctscope.diff(str(old), str(new))
    s = d.summary
    assert (s["new"], s["gone"], s["changed"], s["recreated"], s["unchanged"]) == (3, 2, 4, 1, 13)
    from ctscope.analysis import snapshot_metadata

    mo, mn = snapshot_metadata(old), snapshot_metadata(new)
    interval = (mn["mono_ns"] - mo["mono_ns"]) / 1e9
    assert s["interval_clock"] == "monotonic" and s["interval_s"] == pytest.approx(interval)
    by = {(r["proto"], r["port_a"]): r for r in d.flows.iter_rows(named=True)}
    assert d.flows.height == 10  # unchanged flows left out
    for j, k in enumerate(changed):
        r = by[(cb.TCP, k.port_a)]
        assert r["change"] == "changed" and r["bytes_delta"] == 500 * (j + 1) and r["packets_delta"] == 5
        assert r["bytes_per_s"] == pytest.approx(500 * (j + 1) / interval)
    r = by[(cb.TCP, recreated.port_a)]
    assert r["change"] == "recreated" and r["bytes_delta"] == 7 and r["packets_delta"] == 1
    for k in new_keys:
        assert by[(cb.UDP, k.port_a)]["change"] == "new" and by[(cb.UDP, k.port_a)]["bytes_delta"] == 64
    for k in gone:
        assert by[(cb.TCP, k.port_a)]["change"] == "gone"
    assert s["bytes_delta"] == sum(500 * (j + 1) for j in range(4)) + 7 + 3 * 64
    assert ctscope.diff(str(old), str(new), all=True).flows.height == 23
    j = json.loads(run("diff", old, new, "-f", "json").stdout)
    assert j["summary"]["changed"] == 4 and len(j["flows"]) == 10
    t = run("diff", old, new).stdout
    assert "new 3, gone 2, changed 4, recreated 1, unchanged 13" in t


# ----------------------------------------------------------------------------------------- metrics
def test_metrics_parse_as_prometheus_text(synth_pin, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    st = ctscope.stats(str(synth_pin), now_ns=NOW, timeouts=TIMEOUTS)
    out = tmp_path / "ctscope.prom"
    run("metrics", synth_pin, "--now-ns", NOW, "--timeouts", TIMEOUTS, "-o", out)
    assert not list(tmp_path.glob(".*")), "temporary file left for the textfile collector to read"
    fams = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    def samples(name):
        return [(s.name, s.labels, s.value) for s in fams[name].samples]
    base = {"node": st["node"], "map": "cali_v4_ct4"}
    assert fams["ctscope_conntrack_entries"].type == "gauge"
    assert {s[1]["type"]: s[2] for s in samples("ctscope_conntrack_entries")} == st["by_type"]
    assert samples("ctscope_conntrack_max_entries") == [("ctscope_conntrack_max_entries", base, 32768)]
    assert samples("ctscope_conntrack_fill_ratio")[0][2] == pytest.approx(st["fill_ratio"])
    assert samples("ctscope_conntrack_expired_entries")[0][2] == st["expired"]
    assert samples("ctscope_conntrack_connections")[0][2] == st["total_connections"]
    states = {s[1]["state"]: s[2] for s in samples("ctscope_conntrack_tcp_connections")}
    assert states == {"ESTABLISHED": st["tcp_established"], "CLOSED": st["tcp_closed"], "RESET": st["tcp_reset"],
                      "SYN-SENT": st["tcp_syn_sent"]}
    hist = fams["ctscope_conntrack_idle_seconds"]
    assert hist.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in hist.samples if s.name.endswith("_bucket")]
    assert buckets[-1] == ("+Inf", 20_000) and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    count = [s.value for s in hist.samples if s.name.endswith("_count")]
    assert count == [20_000]
    assert fams["ctscope_conntrack_dump_duration_seconds"].samples[0].value >= 0
    for f in fams.values():  # every series names its node and map
        for s in f.samples:
            assert s.labels["node"] == st["node"] and s.labels["map"] == "cali_v4_ct4"
