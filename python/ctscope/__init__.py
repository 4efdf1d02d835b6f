"""ctscope: inspect, analyse and safely resize Calico eBPF conntrack maps.

    >>> import ctscope
    >>> m = ctscope.open_map("/sys/fs/bpf/tc/globals/cali_v4_ct4")
    >>> m.info.max_entries
    >>> df = m.to_polars()
    >>> ctscope.stats("snapshots/")["fill_ratio"]           # live pin, snapshot file, or many
    >>> ctscope.expired("node1.parquet", all=True)          # Felix's verdict per entry
    >>> ctscope.query("SELECT dport, count(*) n FROM ct GROUP BY 1", "snapshots/")
"""

from typing import TYPE_CHECKING, Any

from ctscope.ctmap import CtMap, open_map, scan_map
from ctscope import errors

# The analysis and acting functions are imported on first use (PEP 562): `import ctscope`
# and every one-shot command then load only what they run (the report's charts, serve's
# HTTP server and the package metadata cost ~0.1 s of start-up otherwise).
_LAZY = {
    "Timeouts": "ctscope.analysis", "expired": "ctscope.analysis", "open_source": "ctscope.analysis",
    "read": "ctscope.analysis", "scan": "ctscope.analysis", "with_expiry": "ctscope.analysis",
    "diff": "ctscope.analysis.diff", "metrics": "ctscope.analysis.metrics", "query": "ctscope.analysis.query",
    "report": "ctscope.analysis.report", "stats": "ctscope.analysis.stats", "top": "ctscope.analysis.top",
    "lookup": "ctscope.act", "in_network": "ctscope.pushdown",
}

if TYPE_CHECKING:
    from ctscope.act import lookup
    from ctscope.pushdown import in_network
    from ctscope.analysis import Timeouts, expired, open_source, read, scan, with_expiry
    from ctscope.analysis.diff import diff
    from ctscope.analysis.metrics import metrics
    from ctscope.analysis.query import query
    from ctscope.analysis.report import report
    from ctscope.analysis.stats import stats
    from ctscope.analysis.top import top

    __version__: str


def __getattr__(name: str) -> Any:
    import importlib

    value: Any
    if name == "__version__":
        # Cargo.toml's version, which maturin gives the wheel (not importlib.metadata: ~10 ms)
        from ctscope._native import __version__ as value
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'ctscope' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


__all__ = ["CtMap", "open_map", "scan_map", "in_network", "errors", "__version__",
           # analysis (ctscope.analysis): live pins, snapshot files, directories/globs of snapshots
           "read", "scan", "open_source", "stats", "expired", "with_expiry", "Timeouts", "top", "diff", "metrics",
           "report", "query",
           # acting on the table (ctscope.act): delete/clean/flush live there too
           "lookup"]
