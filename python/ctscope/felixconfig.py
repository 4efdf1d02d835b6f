"""FelixConfiguration files as `kubectl get felixconfiguration ... -o yaml|json` prints them:
one resource, a List, or several YAML documents. `check` reads the CT map size from them
(`felix_size`: Felix's rule for the size it loads),
`expired` the conntrack timeouts; both go through here so they accept the same files and
fail the same way (missing file: exit 3; unparseable: exit 2)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctscope._native import CT_DEFAULT_MAX_ENTRIES
from ctscope.errors import BadArgument


def resources(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """FelixConfiguration resources in the file, by metadata.name (default "default")."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise BadArgument(f"{p}: larger than {MAX_BYTES >> 20} MiB; a FelixConfiguration is a few KiB")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(2, "no such FelixConfiguration file", str(p)) from None
    except UnicodeDecodeError:
        raise BadArgument(f"{p}: not a text file, expected FelixConfiguration YAML or JSON") from None
    out: dict[str, dict[str, Any]] = {}
    for doc in _documents(text, p):
        for item in doc.get("items") or [] if isinstance(doc.get("items"), list) else [doc]:
            if isinstance(item, dict) and item.get("kind", "FelixConfiguration") == "FelixConfiguration":
                meta = item.get("metadata") or {}
                if not isinstance(meta, dict) or not isinstance(meta.get("name", "default"), str):
                    raise BadArgument(f"{p}: FelixConfiguration metadata is not a mapping with a string name")
                out[meta.get("name", "default")] = item
    if not out:
        raise BadArgument(f"{p}: no FelixConfiguration resource in it")
    return out


def specs(path: str | os.PathLike[str], node: str | None = None) -> list[dict[str, Any]]:
    """The specs that apply, in override order: `default`, then `node.<node>`. A file holding
    a single resource under another name is taken as it is."""
    found = resources(path)
    chosen = [found[n] for n in ("default", f"node.{node}" if node else None) if n in found]
    if not chosen:
        if len(found) != 1:
            raise BadArgument(f"{path}: {len(found)} FelixConfigurations and none named 'default'")
        chosen = list(found.values())
    out = []
    for r in chosen:
        s = r.get("spec") or {}
        if not isinstance(s, dict):
            raise BadArgument(f"{path}: FelixConfiguration spec is not a mapping")
        out.append(s)
    return out


def spec(path: str | os.PathLike[str], node: str | None = None) -> dict[str, Any]:
    """The effective spec: fields of `node.<node>` override those of `default`."""
    merged: dict[str, Any] = {}
    for s in specs(path, node):
        merged.update(s)
    return merged


# Bounds for a hostile file: a FelixConfiguration is a few KiB, a handful of levels deep and
# uses no YAML aliases; these leave ample room while stopping alias bombs ("billion laughs"),
# deep nesting (Python recursion) and huge files before they cost memory or time.
MAX_BYTES = 4 << 20
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_NODES = 100_000


def _documents(text: str, path: Path) -> list[dict[str, Any]]:
    try:
        try:
            data = json.loads(text)
            docs = data if isinstance(data, list) else [data]
        except ValueError:
            docs = _load_yaml(text, path)
        for d in docs:
            _check_depth(d, path)
    except RecursionError:
        raise BadArgument(f"{path}: nested too deeply (a FelixConfiguration is a few levels deep)") from None
    return [d for d in docs if isinstance(d, dict)]


def _load_yaml(text: str, path: Path) -> list[Any]:
    import yaml

    class Bounded(yaml.SafeLoader):
        """SafeLoader refusing more than MAX_ALIASES aliases or MAX_DEPTH nesting."""

        aliases = depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise BadArgument(f"{path}: more than {MAX_ALIASES} YAML aliases (an alias bomb?)")
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise BadArgument(f"{path}: nested deeper than {MAX_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    try:
        return list(yaml.load_all(text, Loader=Bounded))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise BadArgument(f"{path}: not valid YAML or JSON: {' '.join(str(e).split())}") from None


def _check_depth(doc: Any, path: Path) -> None:
    """Depth and expanded size (aliases share nodes: counted as often as they are used),
    each shared node walked once. Recursion stops at MAX_DEPTH, so it stays shallow."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (expanded nodes, height)

    def walk(v: Any, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise BadArgument(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if not isinstance(v, (dict, list)):
            return 1, 0
        if id(v) in memo:
            size, height = memo[id(v)]
            if depth + height > MAX_DEPTH:
                raise BadArgument(f"{path}: nested deeper than {MAX_DEPTH} levels")
            return size, height
        size, height = 1, 0
        for child in (v.values() if isinstance(v, dict) else v):
            s, h = walk(child, depth + 1)
            size, height = size + s, max(height, h + 1)
            if size > MAX_NODES:
                raise BadArgument(f"{path}: expands to more than {MAX_NODES:,} values (a YAML alias bomb?)")
        memo[id(v)] = (size, height)
        return size, height

    walk(doc, 1)


CALICO_DEFAULT_SIZE = CT_DEFAULT_MAX_ENTRIES  # Calico's default bpfMapSizeConntrack (layout.rs)
DEFAULT_SIZE_FILE = "/var/lib/calico/bpf_ct_map_size"
POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"


# --- the CT map size Felix loads (`ctscope check`) ------------------------------------------

def possible_cpus(path: str = POSSIBLE_CPUS) -> int:
    """Number of possible CPUs from a list such as `0-3,5` (what Felix multiplies by)."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return max(n, 1)


def load_felix_config(path: str) -> dict[str, Any]:
    """The `spec` of the `default` FelixConfiguration in a kubectl -o yaml|json file."""
    return spec(path)


def _int_field(spec: dict[str, Any], key: str, path: str) -> int | None:
    v = spec.get(key)
    if v is None:
        return None
    try:
        if isinstance(v, (bool, list, dict)):
            raise TypeError
        n = int(v)
    except (TypeError, ValueError, OverflowError):  # .inf is a YAML float
        shown = repr(v) if isinstance(v, (str, int, float)) else type(v).__name__
        raise BadArgument(f"{path}: spec.{key} = {shown[:60]}, expected an integer") from None
    if n < 0:
        raise BadArgument(f"{path}: spec.{key} = {n}, expected >= 0")
    return n


@dataclass
class ConfiguredSize:
    value: int
    source: str
    # No FelixConfiguration was given: `value` is Calico's default (or the node's auto-grow
    # size file), which holds only if the cluster configures no other size.
    assumed: bool = False
    # The node's auto-grow size file: Felix loads at least this many (max(configured, file)).
    floor: int | None = None


def felix_size(config_path: str | None, size_file: str | None, cpus_path: str = POSSIBLE_CPUS) -> ConfiguredSize:
    """Felix's effective CT size: bpfMapSizeConntrack, or bpfMapSizePerCPUConntrack x
    possible CPUs when that is > 0, or a larger number in the auto-grow size file
    (felix/dataplane/linux/int_dataplane.go). Without a FelixConfiguration the base is
    Calico's default bpfMapSizeConntrack (CT_DEFAULT_MAX_ENTRIES, felix/config/config_params.go) and the
    result is marked `assumed`: the cluster may configure another size."""
    spec = load_felix_config(config_path) if config_path else {}
    where = config_path or "defaults"
    base = _int_field(spec, "bpfMapSizeConntrack", where)
    size, source = ((base, f"{where}: bpfMapSizeConntrack") if base else
                    (CALICO_DEFAULT_SIZE, f"Calico's default bpfMapSizeConntrack {CALICO_DEFAULT_SIZE:,}"
                     + ("" if config_path else " (assumed: no --felix-config)")))
    per_cpu = _int_field(spec, "bpfMapSizePerCPUConntrack", where) or 0
    if per_cpu > 0:
        cpus = possible_cpus(cpus_path)
        size, source = per_cpu * cpus, f"{where}: bpfMapSizePerCPUConntrack {per_cpu} x {cpus} possible CPUs"
    sf = size_file or DEFAULT_SIZE_FILE
    try:
        with open(sf, "rb") as f:  # a number: 4 KiB is plenty (`--size-file /dev/zero` grew without bound)
            text = f.read(4096).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        if size_file:
            raise BadArgument(f"{sf}: no such size file") from None
        text = ""
    except OSError as e:
        raise BadArgument(f"{sf}: cannot read size file: {e.strerror}") from None
    if text:
        try:
            grown = int(text)
        except ValueError:
            raise BadArgument(f"{sf}: holds {text[:40]!r}, expected a number of entries") from None
        if grown > size:
            size, source = grown, f"{sf} (auto-grow size, larger than {source})"
        floor = grown if grown > 0 else None
    else:
        floor = None
    return ConfiguredSize(size, source, assumed=config_path is None, floor=floor)
