"""ctscope: inspect, analyse and safely resize Calico eBPF conntrack maps.

    >>> import ctscope
    >>> m = ctscope.open_map("/sys/fs/bpf/tc/globals/cali_v4_ct4")
    >>> m.info.max_entries
    >>> df = m.to_polars()
    >>> ctscope.stats("snapshots/")["fill_ratio"]           # live pin, snapshot file, or many
    >>> ctscope.expired("node1.parquet", all=True)          # Felix's verdict per entry
    >>> ctscope.query("SELECT dport, count(*) n FROM ct GROUP BY 1", "snapshots/")
"""

from importlib.metadata import PackageNotFoundError, version

from ctscope.ctmap import CtMap, open_map, scan_map
from ctscope import errors
from ctscope.analysis import Timeouts, expired, open_source, read, scan, with_expiry
from ctscope.analysis.diff import diff
from ctscope.analysis.metrics import metrics
from ctscope.analysis.query import query
from ctscope.analysis.report import report
from ctscope.analysis.stats import stats
from ctscope.analysis.top import top
from ctscope.act import lookup

try:
    __version__ = version("ctscope")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = ["CtMap", "open_map", "scan_map", "errors", "__version__",
           # analysis (ctscope.analysis): live pins, snapshot files, directories/globs of snapshots
           "read", "scan", "open_source", "stats", "expired", "with_expiry", "Timeouts", "top", "diff", "metrics",
           "report", "query",
           # acting on the table (ctscope.act): delete/clean/flush live there too
           "lookup"]
