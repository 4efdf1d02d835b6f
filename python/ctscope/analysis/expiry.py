"""Felix's conntrack expiry rules as polars expressions (facts §6; felix/bpf/conntrack
timeouts.go `EntryExpired` and cleanup.go `LivenessScanner.Check`).

Adds two columns: `expired` (bool) and `expire_reason` (Felix's reason text, null when kept).

* Age is the reference monotonic time minus last_seen, in integer nanoseconds (comparisons
  are strict, as Felix's `age > timeout`).
* A NAT_FWD entry keeps no state of its own: it is judged by the entry at its rev key
  (found by a join on rev_proto/rev_addr_a/rev_port_a/rev_addr_b/rev_port_b within the same
  snapshot) — that entry's last_seen, flags and legs, with the protocol of the fwd key. A
  fwd entry whose rev entry is missing is expired (Felix deletes it as useless); so is one
  whose rev key leads to another fwd stub (Felix would read that stub's bytes as legs).
* Its reason is the rev entry's, prefixed "reverse entry: ".
* Entries of layouts that record `created` (v2, v3 up to Calico 3.29) younger than
  CreationGracePeriod are kept, as those Felix versions did; a NAT fwd entry by its rev
  entry's `created` (v3.29 cleanup.go checks the entry it judges), and one without a rev
  entry is expired whatever its age.
* Entries of unknown type are kept: Felix only warns about them (cleanup.go
  `LivenessScanner.Check`, every release), and v3.30's BPF cleanup program has no case for them.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from ctscope.analysis.sources import SNAP
from ctscope.analysis.timeouts import S, Timeouts

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
FLAG_DSR_FWD = 0x02
RST_RESIDUAL_NS = 120 * S  # Felix: "2*60*time.Second" for established/DSR flows with rst_seen set

# Felix's reason strings (timeouts.go), so output can be grepped against Felix's debug logs.
R_RST = "RST seen"
R_FINS = "FINs seen"
R_RST_RESIDUAL = "no traffic on conn with RST with residual traffic for too long"
R_ESTABLISHED = "no traffic on established flow for too long"
R_PRE_ESTABLISHED = "no traffic on pre-established flow for too long"
R_ICMP = "no traffic on ICMP flow for too long"
R_UDP = "no traffic on UDP flow for too long"
R_GENERIC = "no traffic on generic IP flow for too long"
R_NO_REV = "no reverse NAT entry"
REV_PREFIX = "reverse entry: "  # a fwd entry expired because its rev entry is

KEY = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
REV_KEY = ["rev_proto", "rev_addr_a", "rev_port_a", "rev_addr_b", "rev_port_b"]
# What is judged: the entry's own values, or for NAT_FWD its rev entry's.
JUDGED = ["last_seen_ns", "flags", "rst_seen_ns", "a2b_syn", "a2b_ack", "a2b_fin", "a2b_rst",
          "b2a_syn", "b2a_ack", "b2a_fin", "b2a_rst"]
_R = "_rev_"
# A live pin can give the keys as exact u64 words instead of address texts (the internal
# `_kw*`/`_rkw*` columns of rust/src/decode.rs): open_source(columns=[..., KEY_WORDS]).
KEY_WORDS = "_key_words"
# The columns judging reads (a live source decodes only what its command needs).
EXPIRY_COLUMNS = ["type", "created_ns", "proto", *JUDGED, KEY_WORDS]


# Reason codes while judging (integers are far cheaper than strings over millions of rows);
# 0 = kept, NAT fwd entries judged by their rev entry get REV_OFFSET + the rev's code.
_RULES = [R_RST, R_FINS, R_RST_RESIDUAL, R_ESTABLISHED, R_PRE_ESTABLISHED, R_ICMP, R_UDP, R_GENERIC]
REV_OFFSET = 100
NO_REV_CODE = 200
REASON_OF_CODE = {i + 1: r for i, r in enumerate(_RULES)} | {
    REV_OFFSET + i + 1: REV_PREFIX + r for i, r in enumerate(_RULES)} | {NO_REV_CODE: R_NO_REV}
_CODE = "_expire_code"


def _rule_code(col, proto: pl.Expr, now: pl.Expr, t: Timeouts) -> pl.Expr:
    """timeouts.go EntryExpired as a UInt8 code (0 = kept); `col(name)` gives the judged
    entry's column (the row's own, or its rev entry's)."""
    tcp, udp, icmp, generic = _class_rule_codes(col, now, t)
    return (
        pl.when(proto == TCP).then(tcp)
        .when(proto.is_in([ICMP, ICMP6])).then(icmp)
        .when(proto == UDP).then(udp)
        .when(~proto.is_in([TCP, UDP, ICMP, ICMP6])).then(generic)
        .otherwise(pl.lit(0, pl.UInt8))
    )


def _class_rule_codes(col, now: pl.Expr, t: Timeouts) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """EntryExpired's code for an entry of each protocol class: TCP, UDP, ICMP (v4 and v6)
    and any other protocol (0 = kept; a null last_seen is never expired)."""
    def bit(c: str) -> pl.Expr:
        return col(c).fill_null(False)

    age = now - col("last_seen_ns").cast(pl.Int64)
    dsr = (col("flags") & FLAG_DSR_FWD) != 0
    rst = bit("a2b_rst") | bit("b2a_rst")
    fins = pl.when(dsr).then(bit("a2b_fin") | bit("b2a_fin")).otherwise(bit("a2b_fin") & bit("b2a_fin"))
    established = bit("a2b_syn") & bit("a2b_ack") & bit("b2a_syn") & bit("b2a_ack")
    long_lived = established | dsr
    rst_seen_ts = col("rst_seen_ns").fill_null(0) != 0
    code = lambda reason: pl.lit(_RULES.index(reason) + 1, pl.UInt8)  # noqa: E731
    zero = pl.lit(0, pl.UInt8)
    tcp = (
        pl.when(rst & (age > t["TCPResetSeen"])).then(code(R_RST))
        .when(fins & (age > t["TCPFinsSeen"])).then(code(R_FINS))
        .when(long_lived & rst_seen_ts & (age > RST_RESIDUAL_NS)).then(code(R_RST_RESIDUAL))
        .when(long_lived & (age > t["TCPEstablished"])).then(code(R_ESTABLISHED))
        .when(~long_lived & (age > t["TCPSynSent"])).then(code(R_PRE_ESTABLISHED))
        .otherwise(zero)
    )
    def after(timeout: str, reason: str) -> pl.Expr:
        return pl.when(age > t[timeout]).then(code(reason)).otherwise(zero)

    return tcp, after("UDPTimeout", R_UDP), after("ICMPTimeout", R_ICMP), after("GenericTimeout", R_GENERIC)


def with_expiry(frame: pl.LazyFrame | pl.DataFrame, timeouts: Timeouts | str | None = None,
                now_ns: int | pl.Expr | None = None, *, reason_codes: bool = False) -> pl.LazyFrame:
    """`frame` (public schema) plus `expired` and `expire_reason`.

    `timeouts`: a Timeouts, or bpfConntrackTimeouts text resolved against this host.
    `now_ns`: the reference monotonic time — an int, or an expression (per-row `_now_ns` of a
    multi-snapshot source, the default when that column exists).

    NAT fwd rows come out after all other rows (only they are joined with their rev entry,
    which is several times cheaper than joining every row); a map dump has no meaningful
    order anyway. `reason_codes=True` gives `_expire_code` (see REASON_OF_CODE) instead of
    `expire_reason`: cheaper to aggregate over."""
    if not isinstance(timeouts, Timeouts):
        timeouts = Timeouts.resolve(timeouts)
    lf = frame.lazy()
    schema = lf.collect_schema()
    names = schema.names()
    # The join key: the key words when the frame has them (live pins), else the key's columns.
    words = [c for c in names if c.startswith("_kw")]
    by_words = bool(words) and all("_r" + w[1:] in names for w in words)
    key, rev_key = (words, ["_r" + w[1:] for w in words]) if by_words else (KEY, REV_KEY)
    # re-judging replaces expired/expire_reason; the key words stay internal
    cols = [c for c in names if c not in ("expired", "expire_reason") and not c.startswith(("_kw", "_rkw"))]
    if now_ns is None:
        if "_now_ns" not in cols:
            raise ValueError("with_expiry needs now_ns (the reference monotonic time of the dump)")
        now_ns = pl.col("_now_ns")
    now = pl.lit(now_ns, pl.Int64) if isinstance(now_ns, int) else now_ns.cast(pl.Int64)
    group = [SNAP] if SNAP in cols else []
    if not by_words:
        # Rev key columns must have the key's types for the join (hand-built frames may hold all-null columns).
        lf = lf.with_columns(pl.col(r).cast(schema[k]) for k, r in zip(KEY, REV_KEY) if schema[r] != schema[k])
    is_fwd = pl.col("type") == "nat_fwd"
    t = timeouts
    proto = pl.col("proto")
    # Felix ≤ 3.29 checks the judged entry's `created` first (layouts that have it): for a NAT
    # fwd entry that is its rev entry's (`EntryExpired(revEntry)`); a fwd without rev goes at once.
    def in_grace(col) -> pl.Expr:
        return ((now - col("created_ns").cast(pl.Int64)) < t["CreationGracePeriod"]).fill_null(False)

    def graced(code: pl.Expr) -> pl.Expr:
        return pl.when(in_grace(pl.col)).then(pl.lit(0, pl.UInt8)).otherwise(code).alias(_CODE)

    # Felix keeps entries of unknown type ("Unknown conntrack entry type!"; BPF cleanup: no case).
    known = pl.col("type").is_in(["normal", "nat_rev"])
    own = lf.filter(~is_fwd).with_columns(graced(
        pl.when(known).then(_rule_code(pl.col, proto, now, t)).otherwise(pl.lit(0, pl.UInt8)))).select(*cols, _CODE)

    # The rev entry of every fwd entry: keys are unique within a map (and a snapshot), so the
    # left join never duplicates rows. Only entries some fwd entry points at are kept for the
    # join (a semi join against the fwd entries' rev keys, a tenth of the rows or so): the
    # join's table then holds those, not every entry's key and judged columns.
    pointed_at = lf.filter(is_fwd).select(*[pl.col(r).alias(k) for k, r in zip(key, rev_key)], *group)
    rev = lf.filter(~is_fwd).join(pointed_at, on=key + group, how="semi", nulls_equal=False).select(
        *[pl.col(k).alias(r) for k, r in zip(key, rev_key)],
        *[pl.col(c) for c in group],
        *[pl.col(c).alias(_R + c) for c in [*JUDGED, "created_ns"]],
    )
    by_rev = _rule_code(lambda c: pl.col(_R + c), proto, now, t)
    fwd = (
        lf.filter(is_fwd)
        .join(rev, on=rev_key + group, how="left", nulls_equal=False)
        .with_columns(
            pl.when(pl.col(_R + "last_seen_ns").is_null()).then(pl.lit(NO_REV_CODE, pl.UInt8))
            .when(in_grace(lambda c: pl.col(_R + c))).then(pl.lit(0, pl.UInt8))
            .when(by_rev > 0).then(by_rev + REV_OFFSET)
            .otherwise(pl.lit(0, pl.UInt8)).alias(_CODE))
        .select(*cols, _CODE)
    )
    judged = pl.concat([own, fwd], how="vertical").with_columns((pl.col(_CODE) != 0).alias("expired"))
    if reason_codes:
        return judged
    return judged.with_columns(
        pl.col(_CODE).replace_strict(REASON_OF_CODE, default=None, return_dtype=pl.String).alias("expire_reason"),
    ).drop(_CODE)


def expired(source=None, *, timeouts: str | Timeouts | None = None, felix_config=None, now_ns: int | None = None,
            all: bool = False, where: str | None = None, **source_kw) -> pl.DataFrame:
    """Felix's verdict on SOURCE's entries: the expired ones, or with `all=True` every entry,
    with `expired` and `expire_reason` columns. SOURCE as for `ctscope.scan`."""
    from ctscope.analysis.sources import INTERNAL, Source, open_source

    src = source if isinstance(source, Source) else open_source(source, now_ns=now_ns, **source_kw)
    out = []
    for lf in judged_parts(src, timeouts=timeouts, felix_config=felix_config, where=where, only_expired=not all,
                           whole_rows=True):
        with src.reading():
            out.append(lf.drop(INTERNAL).collect())
    return out[0] if len(out) == 1 else pl.concat(out, how="diagonal_relaxed")


def timeouts_for(src, timeouts: str | Timeouts | None = None, felix_config=None) -> Timeouts:
    """Effective timeouts for a source: "Auto" reads the sysctls recorded in its (first)
    snapshot, else this host's."""
    if isinstance(timeouts, Timeouts):
        return timeouts
    snap = src.snapshots[0]
    return Timeouts.resolve(timeouts, felix_config=felix_config, node=snap.node or None, sysctls=snap.sysctls)


def judged_parts(src, *, timeouts: str | Timeouts | None = None, felix_config=None, where: str | None = None,
                 only_expired: bool = False, reason_codes: bool = False, whole_rows: bool = False
                 ) -> Iterator[pl.LazyFrame]:
    """One LazyFrame per snapshot with Felix's verdict columns, --where applied (after judging:
    a NAT fwd entry needs its rev entry even when --where would drop that). Run each before
    taking the next to hold one snapshot in memory at a time.

    `whole_rows`: the caller wants every column of the rows (listings): each snapshot file is
    then read into memory once, as its frame is handed out, instead of once per side of the
    rev join."""
    from ctscope.analysis.sources import where_filter

    t = timeouts_for(src, timeouts, felix_config)
    cond = None
    for part in src.parts:
        if whole_rows:
            with src.reading():
                lf = _judged_whole_rows(part.collect(), t, reason_codes and not where)
        else:
            lf = with_expiry(part, t, reason_codes=reason_codes and not where)
        if where:
            if cond is None:
                cond = where_filter(where, lf)
            lf = lf.filter(cond)
            if reason_codes:
                lf = lf.with_columns(pl.col("expire_reason").replace_strict(
                    {r: c for c, r in REASON_OF_CODE.items()}, default=0, return_dtype=pl.UInt8).alias(_CODE))
        if only_expired:
            lf = lf.filter(pl.col("expired"))
        yield lf


def _judged_whole_rows(df: pl.DataFrame, t: Timeouts, reason_codes: bool) -> pl.LazyFrame:
    """with_expiry for listings: the verdict is computed on the columns judging reads, then
    joined back to the whole rows by position, so the other columns are not copied through
    the rev join, and a filter on the verdict gathers only the rows it keeps."""
    df = df.drop("expired", "expire_reason", strict=False)  # re-judging replaces them
    judged = {"type", "created_ns", SNAP, "_now_ns", *KEY, *REV_KEY, *JUDGED}
    narrow = [c for c in df.columns if c in judged or c.startswith(("_kw", "_rkw"))]
    verdict = [_CODE, "expired"] if reason_codes else ["expired", "expire_reason"]
    v = with_expiry(df.lazy().select(narrow).with_row_index("_row"), t, reason_codes=reason_codes).select(
        "_row", *verdict)
    return df.lazy().with_row_index("_row").join(v, on="_row", how="inner").drop("_row")


def judged_schema(src, timeouts: Timeouts) -> pl.Schema:
    """Columns of judged rows (without reading any)."""
    return with_expiry(src.parts[0], timeouts).collect_schema()


def annotate(src, *, timeouts: str | Timeouts | None = None, felix_config=None) -> pl.LazyFrame:
    """All of the source's rows with Felix's verdict columns, as one LazyFrame (convenient for
    SQL; for many large snapshots prefer judged_parts, which bounds memory)."""
    parts = list(judged_parts(src, timeouts=timeouts, felix_config=felix_config))
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")
