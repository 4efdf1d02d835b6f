"""Files written by earlier ctscope versions still read and verify: Arrow snapshots (dump -o,
snapshot -o, an analysis result) and a backup, as committed in tests/data/ (written before
rust/src/ipc_file.rs: the snapshots by a hand-written writer, metadata and CRC in the footer's
schema; the backup with its entries' CRC in the schema metadata). A damaged copy is still
refused."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ctscope.errors import BadArgument, SnapshotError

DATA = Path(__file__).parent / "data"
NOW = 5_000_000_000_000


@pytest.mark.parametrize("name,entries,host", [
    ("v1-dump", 40, None), ("v1-snapshot", 40, "fixture-node"), ("v1-snapshot-empty", 0, "fixture-n2"),
])
def test_old_arrow_snapshots_read_and_verify(name, entries, host):
    from ctscope.analysis import snapshot_metadata

    p = DATA / f"{name}.arrow"
    meta = snapshot_metadata(p)  # the footer's CRC verified
    assert meta["entries"] == entries and meta["now_ns"] == NOW and meta["map_name"] == "cali_v4_ct4"
    assert meta["layout"] == "v4" and meta["max_entries"] == 64
    if host:
        assert meta["hostname"] == host
    assert pl.read_ipc(p).height == entries


def test_old_analysis_result_reads():
    df = pl.read_ipc(DATA / "v1-top.arrow")
    assert df.height > 0


@pytest.mark.parametrize("name", ["v1-dump", "v1-snapshot"])
def test_old_arrow_snapshot_damage_is_caught_by_its_crc(tmp_path, name):
    from ctscope.analysis import snapshot_metadata

    data = bytearray((DATA / f"{name}.arrow").read_bytes())
    data[len(data) // 3] ^= 0x40  # inside the batches (the footer is the last ~2 kB)
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(data)
    with pytest.raises(SnapshotError, match="CRC"):
        snapshot_metadata(bad)


def test_old_backup_reads_and_verifies(tmp_path):
    from ctscope._native import read_backup

    b = read_backup(DATA / "v1-backup-flush.arrow")
    assert b.count == 30 and len(b.items()) == 30
    assert b.source["name"] == "cali_v4_ct4" and b.source["max_entries"] == 64
    # One value byte flipped: the entries' CRC (schema metadata ctscope.crc32) refuses it.
    data = bytearray((DATA / "v1-backup-flush.arrow").read_bytes())
    first = bytes(next(iter(b.items().values())))
    at = data.find(first)
    assert at > 0
    data[at + 20] ^= 0x01
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(data)
    with pytest.raises(BadArgument, match="CRC"):
        read_backup(bad)



@pytest.mark.kernel
def test_a_new_backup_still_satisfies_older_readers(pin_dir, tmp_path):
    """Older ctscope reads a backup's schema metadata only and checks ctscope.crc32 (keys then
    values): a backup written now carries that and, in the footer, the byte CRC snapshots
    carry, so a restore after a downgrade still works."""
    import zlib

    import pyarrow.ipc as ipc

    from ctscope._native import LiveMap, read_arrow_metadata, synth_map

    pin = pin_dir / "cali_v4_ct4"
    synth_map(str(pin), 300, 512)
    b = tmp_path / "b.arrow"
    LiveMap(str(pin)).snapshot().write(str(b))
    kv, crc = read_arrow_metadata(b, verify=True)
    assert crc and kv["ctscope.entries"] == "300"
    r = ipc.open_file(b)
    old = {k.decode(): v.decode() for k, v in r.schema.metadata.items()}  # what older readers see
    assert {k: v for k, v in old.items()} == kv
    t = r.read_all()
    keys = b"".join(x.as_py() for x in t.column("key"))
    values = b"".join(x.as_py() for x in t.column("value"))
    assert old["ctscope.crc32"] == f"{zlib.crc32(values, zlib.crc32(keys)):08x}"
