"""deploy/daemonset.yaml: the permissions it asks for, and its script run once against a real map."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ctscope
from ctscope.cli.synth import synth

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "daemonset.yaml"


def daemonset() -> dict:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    return next(d for d in docs if d["kind"] == "DaemonSet")


def test_manifest_reads_bpffs_read_only_with_cap_bpf_and_node_name():
    pod = daemonset()["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    bpffs = mounts["/sys/fs/bpf"]
    assert bpffs["readOnly"] is True and vols[bpffs["name"]]["hostPath"]["path"] == "/sys/fs/bpf"
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and caps["add"] == ["BPF"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod["hostNetwork"] is True  # the node's nf_conntrack sysctls ("Auto" timeouts)


@pytest.mark.kernel
def test_manifest_script_runs_once(bpffs, tmp_path):
    """The container's script, with host paths pointed at a private bpffs and temp dirs, for one
    iteration: a partitioned snapshot named after NODE_NAME and a parseable .prom file."""
    globals_dir = bpffs / "deploy" / "tc" / "globals"
    globals_dir.mkdir(parents=True)
    synth(str(globals_dir / "cali_v4_ct4"), 500, max_entries=1024, seed=2)
    (c,) = daemonset()["spec"]["template"]["spec"]["containers"]
    script = c["args"][0]
    assert "while true; do" in script
    snaps, textfile = tmp_path / "snapshots", tmp_path / "textfile"
    textfile.mkdir()
    script = (script.replace("while true; do", "for _once in 1; do")
              .replace("/sys/fs/bpf", str(bpffs / "deploy"))
              .replace("/var/lib/ctscope/snapshots", str(snaps))
              .replace("/var/lib/node_exporter/textfile", str(textfile)))
    env = {**os.environ, "NODE_NAME": "worker-1", "INTERVAL_SECONDS": "0", "KEEP_DAYS": "7",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (snap,) = list(snaps.rglob("*.parquet"))
    assert snap.relative_to(snaps).parts[0] == "node=worker-1"
    assert ctscope.stats(str(snap))["total_entries"] == 500
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families((textfile / "ctscope.prom").read_text())}
    assert fams["ctscope_conntrack_max_entries"].samples[0].labels["node"] == "worker-1"
