"""Raw Calico conntrack key/value bytes, written straight from the facts file (§2–§5).

This is the tests' oracle: it shares no code with ctscope. Every offset below is the one in
``shared/calico-ct-format.md``; each builder asserts its output size.

Layout names: ``"v2"`` (64-byte IPv4 value, 12-byte legs), ``"v3-created"`` (offset 0 = created),
``"v3"`` (offset 0 = rst_seen) and ``"v4"`` (same bytes as v3; LRU map). v3-created, v3 and v4 are
byte-identical: 88-byte IPv4 / 128-byte IPv6 values with 24-byte legs; what differs is meaning:
flags3/flags4 (bytes 18–19) exist in v4 only, the leg's ``workload`` bit in v3 and v4 only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

# protocols
TCP, UDP, ICMP, ICMP6, SCTP = 6, 17, 1, 58, 132

# value type byte (offset 16)
NORMAL, NAT_FWD, NAT_REV = 0, 1, 2

LAYOUTS = ("v2", "v3-created", "v3", "v4")

KEY_SIZE = {4: 16, 6: 40}
VALUE_SIZE = {("v2", 4): 64}
for _l in ("v3-created", "v3", "v4"):
    VALUE_SIZE[(_l, 4)] = 88
    VALUE_SIZE[(_l, 6)] = 128

# §5 flags: bit -> Calico's dump label
FLAG_LABELS = {
    0x01: "nat-out",
    0x02: "fwd-dsr",
    0x04: "np-fwd",
    0x08: "skip-fib",
    0x40: "ext-local",
    0x80: "via-nat-iface",
    0x100: "B-A",
    0x200: "host-psnat",
    0x400: "svc-self",
    0x800: "np-loop",
    0x1000: "np-remote",
    0x2000: "no-dsr",
    0x4000: "no-redir-peer",
    0x8000: "dscp",
    0x10000: "maglev",
    0x20000: "send-rst",
    0x40000: "connlimit-in",
    0x80000: "connlimit-in-rej",
    0x100000: "connlimit-out",
    0x200000: "connlimit-dec",
}
# Bits each layout's Calico reader names (Value.String() / FlagNames); others print as hex.
# v2: v3.24+ felix/bpf/conntrack/v2/map.go (nat-out .. B-A); ct3: v3.26-v3.30 v3/map.go (.. no-dsr);
# ct4: every label above (v3.32 v4/map.go, connlimit-* from master).
NAMED_FLAGS = {
    "v2": {0x01, 0x02, 0x04, 0x08, 0x40, 0x80, 0x100},
    "v3-created": {0x01, 0x02, 0x04, 0x08, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000},
    "v4": set(FLAG_LABELS),
}
NAMED_FLAGS["v3"] = NAMED_FLAGS["v3-created"]
FLAG_NAT_OUT = 0x01
FLAG_DSR_FWD = 0x02
FLAG_BA = 0x100

# leg bit word (§3), LSB first
LEG_SYN, LEG_ACK, LEG_FIN, LEG_RST, LEG_APPROVED, LEG_OPENER, LEG_WORKLOAD = (1 << i for i in range(7))


def ip_bytes(addr: str, family: int) -> bytes:
    """Network-order bytes of ``addr`` for a field of ``family`` (4 → 4 bytes, 6 → 16 bytes)."""
    ip = ipaddress.ip_address(addr)
    if ip.version != family:
        raise ValueError(f"{addr} is not IPv{family}")
    return ip.packed


def family_of(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def canon(addr: str) -> str:
    """Canonical text of an address: what Python's ipaddress prints, with IPv4-mapped IPv6 addresses in
    RFC 5952 §5 mixed notation (``::ffff:172.16.5.4``) as Python ≥ 3.13 prints them (3.11/3.12 print
    ``::ffff:ac10:504``)."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


# ---------------------------------------------------------------------------------------- key §2
@dataclasses.dataclass(frozen=True)
class Key:
    proto: int
    addr_a: str
    port_a: int
    addr_b: str
    port_b: int

    @property
    def family(self) -> int:
        return family_of(self.addr_a)

    def pack(self) -> bytes:
        return pack_key(self.proto, self.addr_a, self.port_a, self.addr_b, self.port_b)


def pack_key(proto: int, addr_a: str, port_a: int, addr_b: str, port_b: int) -> bytes:
    fam = family_of(addr_a)
    n = 4 if fam == 4 else 16
    # protocol: host u32; addresses: network order; ports: host u16
    b = struct.pack(f"<I{n}s{n}sHH", proto, ip_bytes(addr_a, fam), ip_bytes(addr_b, fam), port_a, port_b)
    assert len(b) == KEY_SIZE[fam], len(b)
    return b


def unpack_key(b: bytes) -> Key:
    if len(b) == 16:
        proto, a, bb, pa, pb = struct.unpack("<I4s4sHH", b)
    elif len(b) == 40:
        proto, a, bb, pa, pb = struct.unpack("<I16s16sHH", b)
    else:
        raise ValueError(f"key of {len(b)} bytes")
    return Key(proto, str(ipaddress.ip_address(a)), pa, str(ipaddress.ip_address(bb)), pb)


# ---------------------------------------------------------------------------------------- leg §3
@dataclasses.dataclass(frozen=True)
class Leg:
    bytes: int = 0
    packets: int = 0
    seqno: int = 0  # the TCP sequence number as an integer
    syn: bool = False
    ack: bool = False
    fin: bool = False
    rst: bool = False
    approved: bool = False
    opener: bool = False
    workload: bool = False
    ifindex: int = 0
    extra_bits: int = 0  # bits of the bit word that have no meaning (must be ignored by a decoder)

    def bit_word(self) -> int:
        w = self.extra_bits
        for flag, bit in ((self.syn, LEG_SYN), (self.ack, LEG_ACK), (self.fin, LEG_FIN), (self.rst, LEG_RST),
                          (self.approved, LEG_APPROVED), (self.opener, LEG_OPENER),
                          (self.workload, LEG_WORKLOAD)):
            if flag:
                w |= bit
        return w


def pack_leg(leg: Leg, layout: str) -> bytes:
    seq = struct.pack(">I", leg.seqno)  # network order: the raw TCP sequence number
    if layout == "v2":
        # v2, 12 bytes: seqno(4, network), bit word(4), ifindex(4)
        b = seq + struct.pack("<II", leg.bit_word(), leg.ifindex)
        assert len(b) == 12
    else:
        # v3/v4, 24 bytes: bytes u64, packets u32, seqno(4, network), bit word u32, ifindex u32
        b = struct.pack("<QI", leg.bytes, leg.packets) + seq + struct.pack("<II", leg.bit_word(), leg.ifindex)
        assert len(b) == 24
    return b


# ---------------------------------------------------------------------------------------- value §4
def pack_header(ts0: int, last_seen: int, type_: int, flags: int) -> bytes:
    """The common 24-byte header. ``flags`` is the full 32-bit word; it is split into
    flags (byte 17, bits 0–7), flags3 (byte 18, bits 16–23), flags4 (byte 19, bits 24–31) and
    flags2 (byte 23, bits 8–15). Bytes 20–22 are padding (zero)."""
    f1 = flags & 0xFF
    f2 = (flags >> 8) & 0xFF
    f3 = (flags >> 16) & 0xFF
    f4 = (flags >> 24) & 0xFF
    b = struct.pack("<QQBBBB3xB", ts0, last_seen, type_, f1, f3, f4, f2)
    assert len(b) == 24
    assert b[17] == f1 and b[18] == f3 and b[19] == f4 and b[23] == f2
    return b


def pack_value(layout: str, family: int, *, ts0: int, last_seen: int, type_: int = NORMAL, flags: int = 0,
               a2b: Leg = Leg(), b2a: Leg = Leg(), tun_ip: str | None = None, orig_ip: str | None = None,
               orig_port: int = 0, orig_sport: int = 0, orig_sip: str | None = None) -> bytes:
    """A NORMAL / NAT_REV (or any non-NAT_FWD type byte) value. ``ts0`` goes to offset 0
    (``created`` for v2/v3-created, ``rst_seen`` for v3/v4)."""
    if layout not in LAYOUTS:
        raise ValueError(layout)
    if layout == "v2" and family != 4:
        raise ValueError("v2 is IPv4 only")
    zero = "0.0.0.0" if family == 4 else "::"
    tun = ip_bytes(tun_ip or zero, family)
    oip = ip_bytes(orig_ip or zero, family)
    osip = ip_bytes(orig_sip or zero, family)
    hdr = pack_header(ts0, last_seen, type_, flags)
    if layout == "v2":
        # a_to_b 24, b_to_a 36, orig_ip 48, orig_port 52, orig_sport 54, tun_ip 56, orig_sip 60
        body = pack_leg(a2b, layout) + pack_leg(b2a, layout) + oip + struct.pack("<HH", orig_port, orig_sport) \
            + tun + osip
    elif family == 4:
        # legs 24, 48; tun_ip 72, orig_ip 76, orig_port 80, orig_sport 82, orig_sip 84
        body = pack_leg(a2b, layout) + pack_leg(b2a, layout) + tun + oip \
            + struct.pack("<HH", orig_port, orig_sport) + osip
    else:
        # legs 24, 48; tun_ip 72, orig_ip 88, orig_port 104, orig_sport 106, orig_sip 108; pad to 128
        body = pack_leg(a2b, layout) + pack_leg(b2a, layout) + tun + oip \
            + struct.pack("<HH", orig_port, orig_sport) + osip + bytes(4)
    v = hdr + body
    assert len(v) == VALUE_SIZE[(layout, family)], (layout, family, len(v))
    _check_offsets(v, layout, family, a2b, b2a, tun, oip, osip, orig_port, orig_sport)
    return v


def _check_offsets(v, layout, family, a2b, b2a, tun, oip, osip, orig_port, orig_sport):
    """Re-check the body against the facts file's offset table (belt and braces)."""
    if layout == "v2":
        off = dict(a2b=24, b2a=36, orig_ip=48, orig_port=52, orig_sport=54, tun_ip=56, orig_sip=60)
        n = 4
    elif family == 4:
        off = dict(a2b=24, b2a=48, tun_ip=72, orig_ip=76, orig_port=80, orig_sport=82, orig_sip=84)
        n = 4
    else:
        off = dict(a2b=24, b2a=48, tun_ip=72, orig_ip=88, orig_port=104, orig_sport=106, orig_sip=108)
        n = 16
    ll = 12 if layout == "v2" else 24
    assert v[off["a2b"]:off["a2b"] + ll] == pack_leg(a2b, layout)
    assert v[off["b2a"]:off["b2a"] + ll] == pack_leg(b2a, layout)
    assert v[off["tun_ip"]:off["tun_ip"] + n] == tun
    assert v[off["orig_ip"]:off["orig_ip"] + n] == oip
    assert v[off["orig_sip"]:off["orig_sip"] + n] == osip
    assert struct.unpack_from("<H", v, off["orig_port"])[0] == orig_port
    assert struct.unpack_from("<H", v, off["orig_sport"])[0] == orig_sport


def pack_nat_fwd(layout: str, family: int, *, ts0: int, last_seen: int, flags: int = 0, rev_key: Key,
                 nat_sport: int = 0) -> bytes:
    """A NAT_FWD stub: header, then the NAT_REV entry's full key at 24, nat_sport at 40 (IPv4) / 64 (IPv6)."""
    if rev_key.family != family:
        raise ValueError("rev_key family")
    if layout == "v2" and family != 4:
        raise ValueError("v2 is IPv4 only")
    hdr = pack_header(ts0, last_seen, NAT_FWD, flags)
    k = rev_key.pack()
    v = hdr + k + struct.pack("<H", nat_sport)
    size = VALUE_SIZE[(layout, family)]
    v += bytes(size - len(v))
    assert len(v) == size
    sport_off = 40 if family == 4 else 64
    assert v[24:24 + len(k)] == k and struct.unpack_from("<H", v, sport_off)[0] == nat_sport
    return v


def full_flags(value: bytes, layout: str) -> int:
    """The flags word a decoder should report for ``layout``: v2, v3-created and v3 (ct2/ct3
    maps) have only flags | flags2<<8 (bytes 18–19 are padding there; Calico's v3
    ``Value.Flags()`` is 16 bits); v4 has the full 32-bit word (v3.32 ``Value.Flags()``)."""
    w = value[17] | value[23] << 8
    if layout == "v4":
        w |= value[18] << 16 | value[19] << 24
    return w


def flag_names(word: int, layout: str = "v4") -> list[str]:
    """Calico labels in bit order, as ``layout``'s Calico reader names them; other bits as
    lowercase hex strings ("0x10")."""
    out = []
    for i in range(32):
        bit = 1 << i
        if word & bit:
            out.append(FLAG_LABELS[bit] if bit in NAMED_FLAGS[layout] else hex(bit))
    return out


def is_tcp(proto: int) -> bool:
    """Calico's ``Key.Proto()`` is the low byte of the u32 protocol: 0x106 is TCP."""
    return proto & 0xFF == TCP


def has_workload(layout: str) -> bool:
    """The leg's bit 6 ``workload`` is a field from Calico v3.30 (layouts v3, v4) only."""
    return layout in ("v3", "v4")


def tcp_state(flags: int, a2b: Leg, b2a: Leg) -> str:
    """Calico's display rule (facts §6)."""
    dsr = bool(flags & FLAG_DSR_FWD)
    fins = (a2b.fin or b2a.fin) if dsr else (a2b.fin and b2a.fin)
    if fins:
        return "CLOSED"
    if a2b.rst or b2a.rst:
        return "RESET"
    if a2b.syn and a2b.ack and b2a.syn and b2a.ack:
        return "ESTABLISHED"
    return "SYN-SENT"


# ------------------------------------------------------------------------- bulk entries for iteration tests
def seq_key(i: int, family: int = 4) -> bytes:
    """The i-th of many distinct TCP keys (§2 layout): A derived from i (10.0.0.0/8 or fd00::/96), B fixed."""
    if family == 4:
        a, b = (0x0A000000 | (i & 0xFFFFFF)).to_bytes(4, "big"), bytes([10, 255, 0, 1])
        return struct.pack("<I4s4sHH", TCP, a, b, i & 0xFFFF, 443)
    a = bytes.fromhex("fd00" + "00" * 10) + i.to_bytes(4, "big")
    b = bytes.fromhex("fd00" + "00" * 13 + "ff")
    return struct.pack("<I16s16sHH", TCP, a, b, i & 0xFFFF, 443)


def seq_value(i: int, value_size: int) -> bytes:
    """A NORMAL value: offset 0 = 0, last_seen = i + 1, type 0, no flags; a2b.bytes = i; rest zero."""
    return struct.pack("<QQ", 0, i + 1) + bytes(8) + struct.pack("<Q", i) + bytes(value_size - 32)
