"""Analysis of live CT maps and snapshots with polars: one module per concern.

sources  SOURCE resolution (live pin, snapshot file, directory/glob of snapshots)
timeouts Felix's conntrack timeouts (defaults, bpfConntrackTimeouts, FelixConfiguration, Auto)
expiry   Felix's expiry rules as polars expressions
stats    calico-node's `conntrack stats` figures and more
top      largest groups by entries/bytes/packets
diff     flows new/gone/changed between two snapshots
metrics  Prometheus text exposition
charts   inline SVG charts; report: the HTML page
"""

# Functions named like their modules (stats, top, diff, metrics, report) are exported by
# `ctscope` itself, not here, so `from ctscope.analysis import stats` still gives the module.
# The names here load on first use (PEP 562): a command that needs one module (timeouts,
# for a snapshot's sysctls) does not import polars through the others.
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Diff": "ctscope.analysis.diff", "expired": "ctscope.analysis.expiry", "with_expiry": "ctscope.analysis.expiry",
    "Snapshot": "ctscope.analysis.sources", "Source": "ctscope.analysis.sources",
    "open_source": "ctscope.analysis.sources", "read": "ctscope.analysis.sources", "scan": "ctscope.analysis.sources",
    "Timeouts": "ctscope.analysis.timeouts",
}

if TYPE_CHECKING:
    from ctscope.analysis.diff import Diff
    from ctscope.analysis.expiry import expired, with_expiry
    from ctscope.analysis.sources import Snapshot, Source, open_source, read, scan
    from ctscope.analysis.timeouts import Timeouts
    # The snapshot file format's owner reads (and checks) a snapshot's metadata; public here as before.
    from ctscope.snapshot_file import read_metadata as snapshot_metadata

__all__ = ["Diff", "Snapshot", "Source", "Timeouts", "expired", "open_source", "read", "scan", "snapshot_metadata",
           "with_expiry"]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "snapshot_metadata":
        from ctscope.snapshot_file import read_metadata as value
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'ctscope.analysis' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
