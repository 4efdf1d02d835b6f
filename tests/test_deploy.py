"""deploy/daemonset.yaml: the permissions it asks for, and its script run once against a real map."""

from __future__ import annotations

import os
import shutil
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


def containers() -> dict:
    return {c["name"]: c for c in daemonset()["spec"]["template"]["spec"]["containers"]}


def test_manifest_asks_only_for_what_it_needs():
    pod = daemonset()["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "hostNetwork" not in pod and "hostPID" not in pod
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert set(containers()) == {"serve", "snapshot"}
    for c in containers().values():
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        bpffs = mounts["/sys/fs/bpf"]
        assert bpffs["readOnly"] is True and vols[bpffs["name"]]["hostPath"]["path"] == "/sys/fs/bpf"
        sc = c["securityContext"]
        assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF"]}
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert c["resources"]["limits"]["memory"]
        env = {e["name"]: e for e in c["env"]}
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # The header says plainly that the read-only mount does not stop map writes.
    assert "does NOT stop" in MANIFEST.read_text()


def test_manifest_serves_metrics_on_the_documented_port_with_scrape_annotations():
    tmpl = daemonset()["spec"]["template"]
    ann = tmpl["metadata"]["annotations"]
    serve = containers()["serve"]
    assert serve["args"][0] == "serve" and "0.0.0.0:9769" in serve["args"]
    (port,) = serve["ports"]
    assert port["containerPort"] == 9769 and "hostPort" not in port
    assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"], ann["prometheus.io/path"]) == ("true", "9769",
                                                                                                  "/metrics")
    assert serve["livenessProbe"]["httpGet"]["path"] == "/healthz"


def only_cap_bpf(*argv: str) -> list[str]:
    """argv run as uid 0 with CAP_BPF as its only capability, as the DaemonSet's containers."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux)")
    return [setpriv, "--inh-caps=-all,+bpf", "--ambient-caps=-all,+bpf", "--bounding-set=-all,+bpf",
            "--no-new-privs", "--", *argv]


@pytest.mark.kernel
def test_serve_and_snapshot_work_with_cap_bpf_alone(bpffs, tmp_path):
    """What the header says: no CAP_SYS_ADMIN (nor any other capability) is needed."""
    import socket
    import time
    import urllib.request

    globals_dir = bpffs / "capbpf" / "tc" / "globals"
    globals_dir.mkdir(parents=True)
    synth(str(globals_dir / "cali_v4_ct4"), 300, max_entries=1024, seed=3)
    ctscope_cmd = [sys.executable, "-m", "ctscope"]
    p = subprocess.run(only_cap_bpf("grep", "^CapEff", "/proc/self/status"), capture_output=True, text=True)
    assert p.stdout.split()[1] == f"{1 << 39:016x}", p.stdout  # CAP_BPF (39) and nothing else
    p = subprocess.run(only_cap_bpf(*ctscope_cmd, "snapshot", "--bpffs", str(bpffs / "capbpf"), "--dir",
                                    str(tmp_path / "snaps")), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert ctscope.stats(p.stdout.strip())["total_entries"] == 300
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(only_cap_bpf(*ctscope_cmd, "serve", "--bpffs", str(bpffs / "capbpf"), "--listen",
                                        f"127.0.0.1:{port}"), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
                break
            except OSError:
                assert srv.poll() is None and time.monotonic() < deadline, srv.stderr.read() if srv.poll() else ""
                time.sleep(0.2)
        assert "ctscope_last_read_success 1.0" in text and "ctscope_conntrack_max_entries" in text
    finally:
        srv.terminate()
        srv.wait()


@pytest.mark.kernel
def test_read_only_bpffs_mount_does_not_stop_map_writes(make_ct_map, tmp_path):
    """The claim in the manifest's header, on the real kernel: through a read-only bind mount of
    the bpffs a writable fd is still handed out and updates/deletes succeed; pinning gets EROFS."""
    import errno

    import bpfkernel
    import ctbytes

    m = make_ct_map("v4", 4, 64)
    k = ctbytes.Key(6, "10.0.0.1", 1, "10.0.0.2", 2).pack()
    v = ctbytes.pack_value("v4", 4, ts0=0, last_seen=1)
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(m.path.parent), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        fd = bpfkernel.obj_get(ro / m.path.name)  # flags 0: read and write
        try:
            bpfkernel.update_elem(fd, k, v)
            assert bpfkernel.lookup_elem(fd, k) == v
            bpfkernel.delete_elem(fd, k)
            assert bpfkernel.lookup_elem(fd, k) is None
            with pytest.raises(OSError) as e:
                bpfkernel.obj_pin(fd, ro / "another_pin")
            assert e.value.errno == errno.EROFS
        finally:
            os.close(fd)
    finally:
        subprocess.run(["umount", str(ro)], check=False)


@pytest.mark.kernel
def test_manifest_script_runs_once(bpffs, tmp_path):
    """The snapshot container's script, with host paths pointed at a private bpffs and temp dirs, for
    one iteration: a partitioned snapshot named after NODE_NAME."""
    globals_dir = bpffs / "deploy" / "tc" / "globals"
    globals_dir.mkdir(parents=True)
    synth(str(globals_dir / "cali_v4_ct4"), 500, max_entries=1024, seed=2)
    script = containers()["snapshot"]["args"][0]
    assert "while true; do" in script
    snaps = tmp_path / "snapshots"
    script = (script.replace("while true; do", "for _once in 1; do")
              .replace("/sys/fs/bpf", str(bpffs / "deploy"))
              .replace("/var/lib/ctscope/snapshots", str(snaps)))
    env = {**os.environ, "NODE_NAME": "worker-1", "INTERVAL_SECONDS": "0", "KEEP_DAYS": "7",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (snap,) = list(snaps.rglob("*.parquet"))
    assert snap.relative_to(snaps).parts[0] == "node=worker-1"
    assert ctscope.stats(str(snap))["total_entries"] == 500
