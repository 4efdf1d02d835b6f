"""The README's "Many nodes" promise, checked with the real readers: DuckDB and Spark read a
hive-partitioned snapshot directory written by `ctscope snapshot --dir`, with the queries
taken verbatim from README.md (only the path is replaced), and agree with polars."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import require_kernel

import ctscope

pytestmark = pytest.mark.kernel

README = Path(__file__).resolve().parent.parent / "README.md"
README_ROOT = "/data/ctscope"
MAPS = {"node-a": ("cali_v4_ct4", 3000, 1, []), "node-b": ("cali_v6_ct4", 2000, 2, ["--ipv6"])}


def run(*args) -> str:
    p = subprocess.run([sys.executable, "-m", "ctscope", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture
def fleet(pin_dir, tmp_path):
    """Two nodes' snapshots (IPv4 and IPv6 maps) under one hive-partitioned root."""
    root = tmp_path / "fleet"
    for node, (name, n, seed, extra) in MAPS.items():
        run("synth", pin_dir / name, "--entries", n, "--max-entries", 4096, "--seed", seed, *extra)
        run("snapshot", pin_dir / name, "--dir", root, "--node", node)
    return root


def many_nodes_section() -> str:
    text = README.read_text()
    start = text.index("### Many nodes")
    end = text.index("\n## ", start)
    return text[start:end]


def readme_sql(root: Path) -> list[str]:
    block = re.search(r"```sql\n(.*?)```", many_nodes_section(), re.S).group(1)
    return [s.strip() for s in block.replace(README_ROOT, str(root)).split(";") if s.strip()]


def expected(root: Path) -> pl.DataFrame:
    df = ctscope.read(str(root))
    return (df.group_by("node").agg(pl.len().alias("entries"), (pl.col("type") != "nat_fwd").sum().alias("connections"))
            .sort("node"))


def test_duckdb_runs_the_readme_queries(fleet):
    duckdb = pytest.importorskip("duckdb", reason="needs duckdb (pip install -e '.[test]')")
    counts_sql, meta_sql = readme_sql(fleet)
    con = duckdb.connect()
    cur = con.execute(counts_sql)
    cols = [d[0] for d in cur.description]
    got = pl.DataFrame(cur.fetchall(), schema=cols, orient="row").sort("node")
    want = expected(fleet)
    assert got["node"].to_list() == ["node-a", "node-b"]
    assert got["entries"].to_list() == want["entries"].to_list() == [3000, 2000]
    assert got["connections"].to_list() == want["connections"].to_list()
    assert got["connections"].to_list() != got["entries"].to_list()  # synth maps hold NAT fwd stubs
    assert got["date"].n_unique() == 1  # the hive `date=` partition, as a column
    # The snapshot metadata, read by DuckDB from the files' key/value metadata.
    rows = con.execute(meta_sql).fetchall()
    assert sorted(int(max_entries) for _, max_entries in rows) == [4096, 4096]
    assert sorted(Path(f).parts[-3] for f, _ in rows) == ["node=node-a", "node=node-b"]


def have_spark() -> str | None:
    """Why Spark cannot run here, or None."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "needs pyspark (pip install -e '.[fleet]')"
    if shutil.which("java") is None:
        return "needs a Java runtime for Spark (apt-get install default-jre-headless)"
    return None


def test_spark_reads_the_snapshot_directory(fleet):
    why = have_spark()
    if why:
        if require_kernel():  # CI installs both: never pass there without running Spark
            pytest.fail(f"{why} (CI must run the Spark test)", pytrace=False)
        pytest.skip(why)
    from pyspark.sql import SparkSession

    snippet = re.search(r"`(spark\.read\.parquet\(.*?\.show\(\))`", many_nodes_section()).group(1)
    spark = (SparkSession.builder.master("local[1]").appName("ctscope-test")
             .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC").getOrCreate())
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            eval(snippet.replace(README_ROOT, str(fleet)), {"spark": spark})
        rows = [line.strip("|").split("|") for line in out.getvalue().splitlines() if line.startswith("|")]
        table = {r[0].strip(): int(r[2]) for r in rows[1:]}
        assert table == {"node-a": 3000, "node-b": 2000}, out.getvalue()

        # The README's type note: u64 columns arrive as decimal(20,0), with the values intact.
        sdf = spark.read.parquet(str(fleet))
        types = dict(sdf.dtypes)
        assert types["last_seen_ns"] == "decimal(20,0)" and types["node"] == "string" and types["date"] == "date"
        spark_sum = sdf.selectExpr("sum(last_seen_ns) s").collect()[0]["s"]
        polars_sum = ctscope.read(str(fleet))["last_seen_ns"].cast(pl.Decimal(38, 0)).sum()
        assert int(spark_sum) == int(polars_sum)
        flags = sdf.where("size(flag_names) > 0").select("flag_names").first()[0]
        assert isinstance(flags, list) and all(isinstance(f, str) for f in flags)
    finally:
        spark.stop()
