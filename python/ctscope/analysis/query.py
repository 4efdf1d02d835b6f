"""SQL over the entries (polars SQL) as a table named `ct`: `ctscope.query` and `ctscope query`."""

from __future__ import annotations

import re

import polars as pl

from ctscope.analysis.expiry import annotate
from ctscope.analysis.sources import INTERNAL, open_source, where_filter
from ctscope.errors import BadArgument, polars_gist


def query(sql: str, source=None, *, where: str | None = None, timeouts=None, felix_config=None,
          **source_kw) -> pl.DataFrame:
    """SQL over SOURCE's entries registered as `ct`. Felix's `expired`/`expire_reason`
    columns are added when the SQL or `where` mentions them (judging costs a join per
    snapshot, which other queries need not pay)."""
    src = open_source(source, **source_kw)
    wants_expiry = "expire" in sql.lower() or "expire" in (where or "").lower()
    lf = annotate(src, timeouts=timeouts, felix_config=felix_config) if wants_expiry else src.frame
    cond = where_filter(where, lf)
    if cond is not None:
        lf = lf.filter(cond)
    ctx = pl.SQLContext(ct=lf.drop(INTERNAL))
    try:
        result = ctx.execute(sql, eager=False)
        result.collect_schema()
    except Exception as e:  # polars raises SQL/column errors of several types
        raise BadArgument(f"SQL {sql!r}: {polars_gist(e)}") from None
    with src.reading():
        df = result.collect(engine="streaming")
    # polars names an unaliased count(*) `len`; call it `count`, as SQL engines do (unless
    # the SQL itself says `len`, or already has a `count` column).
    if "len" in df.columns and "count" not in df.columns and not re.search(r"\blen\b", sql, re.IGNORECASE):
        df = df.rename({"len": "count"})
    return df
