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
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(2, "no such FelixConfiguration file", str(p)) from None
    except UnicodeDecodeError:
        raise BadArgument(f"{p}: not a text file, expected FelixConfiguration YAML or JSON") from None
    out: dict[str, dict[str, Any]] = {}
    for doc in _documents(text, p):
        for item in doc.get("items") or [] if isinstance(doc.get("items"), list) else [doc]:
            if isinstance(item, dict) and item.get("kind", "FelixConfiguration") == "FelixConfiguration":
                out[(item.get("metadata") or {}).get("name", "default")] = item
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


def _documents(text: str, path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
        docs = data if isinstance(data, list) else [data]
    except ValueError:
        import yaml

        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            raise BadArgument(f"{path}: not valid YAML or JSON: {' '.join(str(e).split())}") from None
    return [d for d in docs if isinstance(d, dict)]
