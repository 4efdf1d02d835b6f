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

from ctscope.analysis.diff import Diff, diff
from ctscope.analysis.expiry import expired, with_expiry
from ctscope.analysis.metrics import metrics
from ctscope.analysis.report import report
from ctscope.analysis.sources import Source, Snapshot, open_source, read, scan, snapshot_metadata
from ctscope.analysis.stats import stats
from ctscope.analysis.timeouts import Timeouts
from ctscope.analysis.top import top

__all__ = ["Diff", "Snapshot", "Source", "Timeouts", "diff", "expired", "metrics", "open_source", "read", "report",
           "scan", "snapshot_metadata", "stats", "top", "with_expiry"]
