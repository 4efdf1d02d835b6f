"""Predicate pushdown: the part of a polars predicate the Rust decoder can judge on an
entry's raw key/value bytes, before decoding it.

`translate(expr)` walks polars' own serialization of the expression (its JSON form) and
returns a small IR of nested tuples (read by rust/src/pushdown.rs), or None when nothing
can be pushed down:

    ("const", bool)
    ("and", [ir, ...]) / ("or", [ir, ...]) / ("not", ir)
    ("cmp", field, op, int)            field op value; op in eq ne lt le gt ge
    ("in", field, [int, ...])
    ("mask", field, mask, op, int)     (field & mask) op value (flag bits)
    ("idle", op, float)                idle_s op value
    ("addr", column, [(bytes, prefix_len), ...])   the address is in one of these networks
                                       (equality, IN, and LIKE '10.100.%' as 10.100.0.0/16)

Numeric fields: proto, port_a, port_b, sport, dport, flags, last_seen_ns, and type (its
code: 0 normal, 1 nat_fwd, 2 nat_rev, N for "unknown(N)"). Address columns: addr_a,
addr_b, src, dst. All of them are never null, so NOT is plain negation.

The IR is a prefilter that keeps a superset of the rows the predicate keeps: a part it
cannot translate becomes "keep" (in an AND it is dropped, an OR containing it keeps
everything, a NOT of anything inexact is not pushed). Callers always apply the full
predicate in polars to the decoded rows as well, so results never depend on this module;
only the work does. Anything unexpected in the serialized form means "no pushdown".
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `import ctscope` runs without polars
    import polars as pl

NUMERIC = ("proto", "port_a", "port_b", "sport", "dport", "flags", "last_seen_ns")
ADDRESSES = ("addr_a", "addr_b", "src", "dst")
TYPES = {"normal": 0, "nat_fwd": 1, "nat_rev": 2}
KEEP = ("const", True)
_OPS = {"Eq": "eq", "EqValidity": "eq", "NotEq": "ne", "NotEqValidity": "ne", "Lt": "lt", "LtEq": "le",
        "Gt": "gt", "GtEq": "ge"}
_FLIP = {"eq": "eq", "ne": "ne", "lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}
_NEG = {"eq": "ne", "ne": "eq", "lt": "ge", "le": "gt", "gt": "le", "ge": "lt"}
_I128 = 2**127


class _Untranslatable(Exception):
    pass


def translate(expr: pl.Expr | None) -> tuple | None:
    """The pushdown IR for `expr`, or None when no row can be ruled out before decoding."""
    if expr is None:
        return None
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
        ir, _exact = _node(tree)
    except Exception:  # an expression form this version of polars serializes differently
        return None
    return None if ir == KEEP else ir


def _node(n: Any) -> tuple[tuple, bool]:
    """(ir, exact): exact when the IR keeps precisely the rows the expression keeps."""
    try:
        return _translate(n)
    except _Untranslatable:
        return KEEP, False


def _translate(n: Any) -> tuple[tuple, bool]:
    if not isinstance(n, dict) or len(n) != 1:
        raise _Untranslatable
    (kind, body), = n.items()
    if kind == "BinaryExpr":
        op = body["op"]
        if op in ("And", "LogicalAnd") and not _is_bitwise(body):
            return _and([_node(body["left"]), _node(body["right"])])
        if op in ("Or", "LogicalOr") and not _is_bitwise(body):
            return _or([_node(body["left"]), _node(body["right"])])
        if op in _OPS:
            return _compare(body["left"], _OPS[op], body["right"])
        raise _Untranslatable
    if kind == "Cast":
        if body.get("dtype") in ({"Literal": "Boolean"}, "Boolean"):
            return _translate(body["expr"])
        raise _Untranslatable
    if kind == "Function":
        fn, args = body["function"], body["input"]
        if fn == {"Boolean": "Not"} and len(args) == 1:
            ir, exact = _node(args[0])
            if not exact:
                return KEEP, False
            return _not(ir), True
        col = _column(args[0]) if args else None
        if fn == {"StringExpr": "StartsWith"} and len(args) == 2 and col is not None and col in ADDRESSES:
            value = _scalar(args[1])
            if isinstance(value, str):
                return _octet_prefix(col, value)
        if isinstance(fn, dict) and len(fn) == 1:
            (group, f), = fn.items()
            if isinstance(f, dict) and "IsIn" in f and group in ("Boolean", "Sql") and len(args) == 2:
                return _is_in(args[0], _literal_values(args[1]))
            if group == "Boolean" and isinstance(f, dict) and "IsBetween" in f and len(args) == 3:
                closed = f["IsBetween"].get("closed", "Both")
                lo = "ge" if closed in ("Both", "Left") else "gt"
                hi = "le" if closed in ("Both", "Right") else "lt"
                return _and([_node_cmp(args[0], lo, args[1]), _node_cmp(args[0], hi, args[2])])
            if group == "Sql" and isinstance(f, dict) and "Binary" in f and f["Binary"] in _OPS and len(args) == 2:
                return _compare(args[0], _OPS[f["Binary"]], args[1])
        raise _Untranslatable
    raise _Untranslatable


def _node_cmp(left, op, right) -> tuple[tuple, bool]:
    try:
        return _compare(left, op, right)
    except _Untranslatable:
        return KEEP, False


def _is_bitwise(body: dict) -> bool:
    """`flags & 4` serializes like a logical AND: tell them apart by an integer literal."""
    return any(_int_literal(body[s]) is not None for s in ("left", "right"))


def _and(parts: list[tuple[tuple, bool]]) -> tuple[tuple, bool]:
    irs = [ir for ir, _ in parts if ir != KEEP]
    exact = all(e for _, e in parts)
    if any(ir == ("const", False) for ir in irs):
        return ("const", False), exact
    if not irs:
        return KEEP, exact
    return (irs[0] if len(irs) == 1 else ("and", irs)), exact


def _or(parts: list[tuple[tuple, bool]]) -> tuple[tuple, bool]:
    irs = [ir for ir, _ in parts if ir != ("const", False)]
    exact = all(e for _, e in parts)
    if any(ir == KEEP for ir in irs):
        return KEEP, exact
    if not irs:
        return ("const", False), exact
    # Networks of one address column are one test (a CIDR that is not whole octets arrives
    # as an OR of its whole-octet subnets: they are collapsed back into it).
    nets: dict[str, list] = {}
    rest = []
    for ir in irs:
        if ir[0] == "addr":
            nets.setdefault(ir[1], []).extend(ir[2])
        else:
            rest.append(ir)
    irs = rest + [("addr", col, _collapse(n)) for col, n in nets.items()]
    return (irs[0] if len(irs) == 1 else ("or", irs)), exact


def _collapse(nets: Sequence[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """The same addresses in as few networks as possible, each family on its own."""
    v4 = [ipaddress.IPv4Network((b, p)) for b, p in nets if len(b) == 4]
    v6 = [ipaddress.IPv6Network((b, p)) for b, p in nets if len(b) == 16]
    out = [(n.network_address.packed, n.prefixlen) for n in ipaddress.collapse_addresses(v4)]
    return out + [(n.network_address.packed, n.prefixlen) for n in ipaddress.collapse_addresses(v6)]


def _not(ir: tuple) -> tuple:
    if ir[0] == "const":
        return ("const", not ir[1])
    if ir[0] == "not":
        return ir[1]
    return ("not", ir)


def _column(n: Any) -> str | None:
    return n["Column"] if isinstance(n, dict) and isinstance(n.get("Column"), str) else None


def _scalar(n: Any) -> Any:
    """A literal's Python value (int, float, str), or raise."""
    if not isinstance(n, dict) or "Literal" not in n:
        raise _Untranslatable
    lit = n["Literal"]
    if not isinstance(lit, dict) or len(lit) != 1:
        raise _Untranslatable
    (kind, v), = lit.items()
    if kind == "Dyn" and isinstance(v, dict) and len(v) == 1:
        (t, x), = v.items()
        if t == "Int" and isinstance(x, int):
            return x
        if t == "Float" and isinstance(x, (int, float)):
            return float(x)
        if t == "Str" and isinstance(x, str):
            return x
        raise _Untranslatable
    if kind == "Scalar" and isinstance(v, dict) and len(v) == 1:
        (t, x), = v.items()
        if t == "String" and isinstance(x, str):
            return x
        if t in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64") and isinstance(x, int):
            return x
        if t in ("Float32", "Float64") and isinstance(x, (int, float)):
            return float(x)
        if t == "Decimal" and isinstance(x, list) and len(x) == 3 and all(isinstance(i, int) for i in x):
            # [unscaled value, precision, scale]
            from decimal import Decimal

            return Decimal(x[0]).scaleb(-x[2])
        raise _Untranslatable
    raise _Untranslatable


def _int_literal(n: Any) -> int | None:
    try:
        v = _scalar(n)
    except _Untranslatable:
        return None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _literal_values(n: Any) -> list:
    """The values of an is_in list literal (serialized as an Arrow IPC stream)."""
    if not isinstance(n, dict) or "Literal" not in n:
        raise _Untranslatable
    lit = n["Literal"]
    raw = None
    if isinstance(lit, dict):
        if isinstance(lit.get("Series"), list):
            raw = lit["Series"]
        elif isinstance(lit.get("Scalar"), dict) and isinstance(lit["Scalar"].get("List"), list):
            raw = lit["Scalar"]["List"]
    if raw is None:
        raise _Untranslatable
    import polars as pl

    s = pl.read_ipc_stream(io.BytesIO(bytes(raw))).to_series()
    if s.dtype == pl.List:
        s = s.explode()
    return s.to_list()


def _compare(left: Any, op: str, right: Any) -> tuple[tuple, bool]:
    col = _column(left)
    if col is None and _column(right) is not None:
        col, op, left, right = _column(right), _FLIP[op], right, left
    if col is None and _int_literal(left) is not None:
        left, op, right = right, _FLIP[op], left  # v op (field & m)
    if col is None:
        # (field & m) op v
        if isinstance(left, dict) and "BinaryExpr" in left and left["BinaryExpr"]["op"] == "And":
            inner = left["BinaryExpr"]
            c, m = _column(inner["left"]), _int_literal(inner["right"])
            if c is None:
                c, m = _column(inner["right"]), _int_literal(inner["left"])
            v = _int_literal(right)
            if c in NUMERIC and m is not None and v is not None and 0 <= m < 2**64 and abs(v) < _I128:
                return ("mask", c, m, op, v), True
        raise _Untranslatable
    value = _scalar(right)
    if col in NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int):
            iv = _integral(value)
            if iv is None:
                raise _Untranslatable
            value = iv
        if abs(value) >= _I128:
            raise _Untranslatable
        return ("cmp", col, op, value), True
    if col == "idle_s":
        if isinstance(value, str) or op in ("eq", "ne"):
            raise _Untranslatable
        f = float(value)
        if not math.isfinite(f):
            raise _Untranslatable
        # Widened a little: float formatting of the literal must never drop a row.
        eps = 1e-6 * max(1.0, abs(f))
        return ("idle", "ge" if op in ("gt", "ge") else "le", f - eps if op in ("gt", "ge") else f + eps), False
    if col == "type" and op in ("eq", "ne") and isinstance(value, str):
        ir = ("in", "type", _type_codes([value]))
        return (ir if op == "eq" else _not(ir)), True
    if col in ADDRESSES and op in ("eq", "ne") and isinstance(value, str):
        ir, exact = _addresses(col, [value])
        if op == "eq":
            return ir, exact
        return (_not(ir), True) if exact else (KEEP, False)
    raise _Untranslatable


def _integral(v: Any) -> int | None:
    try:
        if isinstance(v, str) or not math.isfinite(float(v)) or v != int(v):
            return None
    except (TypeError, ValueError, OverflowError):
        return None
    return int(v)


def _is_in(left: Any, values: list) -> tuple[tuple, bool]:
    col = _column(left)
    if col is None:
        raise _Untranslatable
    vals = [v for v in values if v is not None]  # null never matches (nulls_equal is false)
    if col in NUMERIC:
        ints = []
        for v in vals:
            iv = v if isinstance(v, int) and not isinstance(v, bool) else _integral(v)
            if iv is None or abs(iv) >= _I128:
                raise _Untranslatable
            ints.append(iv)
        return ("in", col, sorted(set(ints))), True
    if col == "type" and all(isinstance(v, str) for v in vals):
        return ("in", "type", _type_codes(vals)), True
    if col in ADDRESSES and all(isinstance(v, str) for v in vals):
        return _addresses(col, vals)
    raise _Untranslatable


def _octet_prefix(col: str, text: str) -> tuple[tuple, bool]:
    """`src LIKE '10.100.%'`: whole IPv4 octets and a dot are a /8, /16 or /24 network
    (exactly: the decoder writes octets without leading zeros, and no IPv6 text starts so)."""
    parts = text.split(".")
    octets = parts[:-1]
    if parts[-1] != "" or not 1 <= len(octets) <= 3 or not all(
            o.isdigit() and str(int(o)) == o and int(o) < 256 for o in octets):
        raise _Untranslatable
    net = bytes(int(o) for o in octets) + bytes(4 - len(octets))
    return ("addr", col, [(net, 8 * len(octets))]), True


def _type_codes(names: list[str]) -> list[int]:
    """The type codes whose text (as the decoder writes it) is one of `names`."""
    codes = set()
    for s in names:
        if s in TYPES:
            codes.add(TYPES[s])
        elif s.startswith("unknown(") and s.endswith(")") and s[8:-1].isdigit():
            n = int(s[8:-1])
            if 2 < n < 256 and str(n) == s[8:-1]:
                codes.add(n)
    return sorted(codes)


def _addresses(col: str, texts: list[str]) -> tuple[tuple, bool]:
    """Equality with address texts as byte matches. Text that is no address matches no row
    (the decoder only writes addresses). Exact for canonical IPv4 text; IPv6 text may be
    written differently by Python and the decoder, so it only prefilters."""
    nets, exact = [], True
    for t in texts:
        try:
            ip = ipaddress.ip_address(t)
        except ValueError:
            continue
        nets.append((ip.packed, ip.max_prefixlen))
        exact = exact and ip.version == 4 and str(ip) == t
    if not nets:
        return ("const", False), True
    return ("addr", col, _collapse(nets)), exact


# ------------------------------------------------------------------------------ networks (CIDR)
_NETWORK_CALL = re.compile(r"\bin_network\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,\s*'([^']*)'\s*\)", re.IGNORECASE)


def network_sql(column: str, network: str) -> str:
    """SQL that keeps the rows whose address `column` lies in the IPv4 `network`
    ("10.1.0.0/23"), exactly, as text tests on the addresses the decoder writes (canonical
    dotted quads): whole-octet prefixes (`LIKE '10.1.0.%' OR LIKE '10.1.1.%'`, at most 128,
    which the pushdown collapses back into the one network), or whole addresses for
    prefixes longer than /24. IPv6 networks are refused: an IPv6 address's text does not
    start with its network's (zero runs are compressed anywhere), so no text test is exact."""
    from ctscope.errors import BadArgument

    try:
        net = ipaddress.ip_network(network.strip(), strict=False)
    except ValueError:
        raise BadArgument(f"in_network({column}, {network!r}): expected an IPv4 network such as '10.1.0.0/23'") from None
    if net.version != 4:
        raise BadArgument(f"in_network({column}, {network!r}): only IPv4 networks are supported (for IPv6, compare "
                          "whole addresses with = or IN)")
    if not column.isidentifier():
        raise BadArgument(f"in_network({column!r}, ...): expected a column name")
    octets = -(-net.prefixlen // 8)
    if octets == 0:  # /0: every IPv4 address (digits and dots; IPv6 text has colons)
        return f"regexp_like({column}, '^[0-9.]+$')"
    subnets = list(net.subnets(new_prefix=8 * octets))
    if octets == 4:
        return f"{column} IN ({', '.join(repr(str(n.network_address)) for n in subnets)})"
    texts = [".".join(str(o) for o in n.network_address.packed[:octets]) + ".%" for n in subnets]
    return "(" + " OR ".join(f"{column} LIKE '{t}'" for t in texts) + ")"


def expand_networks(where: str) -> str:
    """--where text with each `in_network(column, 'a.b.c.d/n')` replaced by its SQL
    (network_sql); a call written inside a quoted literal is left alone."""
    literals = [m.span() for m in re.finditer(r"'(?:[^']|'')*'", where)]

    def sub(m: re.Match) -> str:
        if any(a <= m.start() < b for a, b in literals):
            return m.group(0)
        return network_sql(m.group(1), m.group(2))

    return _NETWORK_CALL.sub(sub, where)


def in_network(column: str, network: str) -> pl.Expr:
    """`column`'s address lies in the IPv4 `network`: `ctscope.scan_map(pin).filter(
    ctscope.in_network("dst", "10.1.0.0/23"))`. Judged on the raw bytes before decoding."""
    import polars as pl

    return pl.sql_expr(network_sql(column, network))
