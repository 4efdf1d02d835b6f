"""FelixConfiguration files as `kubectl get felixconfiguration ... -o yaml|json` prints them:
one resource, a List, or several YAML documents. `check` reads the CT map size from them,
`expired` the conntrack timeouts; both go through here so they accept the same files and
fail the same way (missing file: exit 3; unparseable: exit 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
