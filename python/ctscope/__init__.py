"""ctscope: inspect, analyse and safely resize Calico eBPF conntrack maps.

    >>> import ctscope
    >>> m = ctscope.open_map("/sys/fs/bpf/tc/globals/cali_v4_ct4")
    >>> m.info.max_entries
    >>> df = m.to_polars()
"""

from importlib.metadata import PackageNotFoundError, version

from ctscope.ctmap import CtMap, open_map
from ctscope import errors

try:
    __version__ = version("ctscope")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = ["CtMap", "open_map", "errors", "__version__"]
