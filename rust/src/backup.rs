//! Backup snapshots of a map's raw entries, written before any repair touches a pin.
//!
//! Format: an Arrow IPC *file* (readable by polars/pyarrow) with two columns, `key` and
//! `value`, both FixedSizeBinary of the map's sizes, written through crate::ipc_file like
//! Arrow snapshots: the footer's custom_metadata carries `ctscope_crc32`, the CRC-32 of the
//! file's bytes from offset 8 to the footer (the convention snapshots share). The `ctscope.*`
//! metadata (in the schema, and again in the footer) carries the map's parameters, the entry
//! count and `ctscope.crc32`, a CRC-32 of all key bytes then all value bytes: backups of
//! earlier ctscope versions have only that one, and those versions (which read only the
//! schema) can still restore a backup written now, after a downgrade. A
//! truncated or altered file is refused rather than restored. The file is written under a
//! temporary name in the target directory, fsynced, renamed into place and the directory
//! fsynced: after a crash either the complete backup exists or none does.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, FixedSizeBinaryArray, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{read_footer_length, FileDecoder};
use arrow_ipc::root_as_footer;
use arrow_schema::{DataType, Field, Schema};

use crate::error::{CtError, Result};
use crate::ipc_file::IpcFileWriter;

pub const FORMAT: &str = "ctscope-backup/1";
const ROWS_PER_BATCH: usize = 65536;

/// The parameters of the map a backup was taken from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMap {
    pub pin: String,
    pub name: String,
    pub id: u32,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub map_extra: u64,
}

/// Raw entries in memory: `count` keys and values, back to back.
#[derive(Clone, Debug, Default)]
pub struct Entries {
    pub key_size: usize,
    pub value_size: usize,
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
    pub count: usize,
}

impl Entries {
    pub fn new(key_size: usize, value_size: usize) -> Self {
        Entries { key_size, value_size, ..Default::default() }
    }
    pub fn key(&self, i: usize) -> &[u8] {
        &self.keys[i * self.key_size..(i + 1) * self.key_size]
    }
    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        self.keys.extend_from_slice(key);
        self.values.extend_from_slice(value);
        self.count += 1;
    }
    /// CRC-32 of all key bytes followed by all value bytes.
    pub fn crc32(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.keys);
        h.update(&self.values);
        h.finalize()
    }
}

/// A backup read back from disk.
pub struct Backup {
    pub source: SourceMap,
    pub entries: Entries,
    /// CLOCK_REALTIME ns when the backup was taken.
    pub taken_ns: u64,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> CtError {
    CtError::BadArgument(format!("{}: {what}", path.display()))
}

/// Write `entries` of `source` to `path` atomically. Refuses to overwrite an existing file.
pub fn write(path: &Path, source: &SourceMap, entries: &Entries, taken_ns: u64) -> Result<u64> {
    write_new(path, source, entries, taken_ns, false).map(|(_, bytes)| bytes)
}

/// `path` with `-n` before its extension: `b-20260101T000000Z.arrow` -> `b-20260101T000000Z-2.arrow`.
fn numbered_name(path: &Path, n: u32) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}-{n}{ext}"))
}

/// Move `tmp` to `dst` only if `dst` does not exist, in one step (renameat2
/// RENAME_NOREPLACE; link(2) + unlink on filesystems without that flag). Never replaces a
/// file, whoever created it and whenever: Ok(false) when `dst` exists.
fn claim(tmp: &Path, dst: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL));
    let (ct, cd) = (c(tmp)?, c(dst)?);
    // SAFETY: two NUL-terminated paths, relative to the working directory.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, ct.as_ptr(), libc::AT_FDCWD, cd.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => match std::fs::hard_link(tmp, dst) {
            Ok(()) => {
                let _ = std::fs::remove_file(tmp);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        _ => Err(e),
    }
}

/// Write a backup under `path`, or (with `numbered`, for default names that may collide
/// with a concurrent run's) under the first of `path`, `path-2`, `path-3`, ... that does
/// not exist. The complete, fsynced file is claimed under its final name atomically, so a
/// backup is never overwritten, even by a race. Returns the name used and the size.
pub fn write_new(path: &Path, source: &SourceMap, entries: &Entries, taken_ns: u64, numbered: bool) -> Result<(PathBuf, u64)> {
    let shown = path.display();
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    if !numbered && exists(path) {
        return Err(CtError::BadArgument(format!("{shown}: already exists; a backup is never overwritten")));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(CtError::BadArgument(format!("{shown}: directory {} does not exist", dir.display())));
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.partial", std::process::id()));
    let res = write_tmp(&tmp, path, &dir, source, entries, taken_ns).and_then(|bytes| {
        let mut n = 1;
        let mut dst = path.to_path_buf();
        loop {
            let claimed = claim(&tmp, &dst).map_err(|e| CtError::os(format!("{}: moving the backup into place", dst.display()), e))?;
            if claimed {
                break;
            }
            if !numbered {
                return Err(CtError::BadArgument(format!("{shown}: already exists; a backup is never overwritten")));
            }
            n += 1;
            if n > 10_000 {
                return Err(CtError::BadArgument(format!("{shown}: {n} backups of this name exist already")));
            }
            dst = numbered_name(path, n);
        }
        sync_dir(&dir)?;
        Ok((dst, bytes))
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Write the backup to `tmp` (O_EXCL, 0600) and fsync it. Errors name the backup `path`
/// and its directory, not the internal temporary name.
fn write_tmp(tmp: &Path, path: &Path, dir: &Path, source: &SourceMap, entries: &Entries, taken_ns: u64) -> Result<u64> {
    let shown = path.display();
    let io = |what: &str, e: std::io::Error| CtError::os(format!("{shown}: {what}"), e);
    let file = OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(tmp).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => CtError::Permission(format!(
                "{shown}: cannot write the backup: directory {} is not writable ({e}); choose another with --backup",
                dir.display()
            )),
            _ => io(&format!("creating the backup in {}", dir.display()), e),
        }
    })?;
    let ks = i32::try_from(entries.key_size).map_err(|_| bad(tmp, "key size too large"))?;
    let vs = i32::try_from(entries.value_size).map_err(|_| bad(tmp, "value size too large"))?;
    let meta: HashMap<String, String> = [
        ("ctscope.format", FORMAT.to_string()),
        ("ctscope.pin", source.pin.clone()),
        ("ctscope.name", source.name.clone()),
        ("ctscope.map_id", source.id.to_string()),
        ("ctscope.map_type", source.map_type.to_string()),
        ("ctscope.key_size", source.key_size.to_string()),
        ("ctscope.value_size", source.value_size.to_string()),
        ("ctscope.max_entries", source.max_entries.to_string()),
        ("ctscope.map_flags", source.map_flags.to_string()),
        ("ctscope.map_extra", source.map_extra.to_string()),
        ("ctscope.entries", entries.count.to_string()),
        ("ctscope.crc32", format!("{:08x}", entries.crc32())),
        ("ctscope.taken_realtime_ns", taken_ns.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let schema = Arc::new(Schema::new_with_metadata(
        vec![Field::new("key", DataType::FixedSizeBinary(ks), false), Field::new("value", DataType::FixedSizeBinary(vs), false)],
        meta,
    ));
    let arrow = |e: arrow_schema::ArrowError| CtError::Os { op: format!("{shown}: writing Arrow IPC"), err: std::io::Error::other(e) };
    let mut w = IpcFileWriter::try_new(BufWriter::with_capacity(1 << 20, file), &schema).map_err(arrow)?;
    // One shared buffer per column; batches are zero-copy slices of it.
    let keys = Buffer::from(entries.keys.clone());
    let values = Buffer::from(entries.values.clone());
    let mut start = 0;
    while start < entries.count || (start == 0 && entries.count == 0) {
        let n = ROWS_PER_BATCH.min(entries.count - start);
        let k = FixedSizeBinaryArray::try_new(ks, keys.slice_with_length(start * entries.key_size, n * entries.key_size), None)
            .map_err(arrow)?;
        let v = FixedSizeBinaryArray::try_new(
            vs,
            values.slice_with_length(start * entries.value_size, n * entries.value_size),
            None,
        )
        .map_err(arrow)?;
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)]).map_err(arrow)?;
        w.write(&batch).map_err(arrow)?;
        start += n;
        if n == 0 {
            break;
        }
    }
    // Everything is known up front: the footer repeats the schema's metadata, plus the CRC.
    let (mut buf, _) = w.finish(schema.metadata()).map_err(arrow)?;
    buf.flush().map_err(|e| io("flush", e))?;
    let file = buf.into_inner().map_err(|e| io("flush", e.into_error()))?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
}

/// fsync a directory so a rename in it survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| CtError::os(format!("{}: open directory", dir.display()), e))?;
    d.sync_all().map_err(|e| CtError::os(format!("{}: fsync directory", dir.display()), e))
}

/// Read a backup, checking its format, sizes, entry count and CRC.
///
/// A backup is hostile input like any file: every size in it (footer length, block
/// offsets and lengths, key/value sizes, entry count) is checked against the file's real
/// length before anything is allocated or sliced, so a crafted file is a one-line
/// BadArgument, never an allocation abort or a panic.
pub fn read(path: &Path) -> Result<Backup> {
    let shown = path.display();
    let open_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => CtError::PinNotFound(format!("{shown}: no such backup file")),
        _ => CtError::os(format!("{shown}: open backup"), e),
    };
    // Only a regular file, read up to the length fstat gave: `--from /dev/zero` read to its
    // end grew without bound (23 GB in 6 s, then the OOM killer), and a FIFO blocked forever.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(bad(path, "not a regular file; expected a ctscope backup file (Arrow IPC)"));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, meta.len()), &mut data).map_err(open_err)?;
    let file_len = data.len();
    let not_ipc = |why: &str| bad(path, format!("not a complete ctscope backup (Arrow IPC file): {why}"));
    if file_len < 16 || &data[..6] != b"ARROW1" || &data[file_len - 6..] != b"ARROW1" {
        return Err(not_ipc("no ARROW1 magic at both ends"));
    }
    // The structure (footer, every block inside the file) and, in backups written since
    // ipc_file (all since the backups moved there), the CRC of the file's bytes; the
    // metadata from the footer when it has any, else from the schema (older backups).
    let checked = crate::ipc_file::read_metadata(&data[..], &shown.to_string(), true)?;
    let buffer = Buffer::from_vec(data);
    let trailer = file_len - 10;
    let footer_len = read_footer_length(buffer[trailer..].try_into().expect("10 bytes"))
        .map_err(|e| not_ipc(&e.to_string()))?;
    if footer_len > trailer.saturating_sub(8) {
        return Err(not_ipc(&format!("footer length {footer_len} exceeds the file")));
    }
    let footer = root_as_footer(&buffer[trailer - footer_len..trailer]).map_err(|e| not_ipc(&format!("footer: {e}")))?;
    let fb_schema = footer.schema().ok_or_else(|| not_ipc("no schema in the footer"))?;
    let schema = Arc::new(try_fb_to_schema(fb_schema).map_err(|e| not_ipc(&e.to_string()))?);
    let meta = &checked.metadata;
    let get = |k: &str| -> Result<&String> {
        meta.get(&format!("ctscope.{k}")).ok_or_else(|| bad(path, format!("not a ctscope backup (metadata ctscope.{k} missing)")))
    };
    if get("format")? != FORMAT {
        return Err(bad(path, format!("backup format {:?}, expected {FORMAT:?}", get("format")?)));
    }
    let num = |k: &str| -> Result<u64> {
        get(k)?.parse::<u64>().map_err(|_| bad(path, format!("metadata ctscope.{k} is not a number")))
    };
    let num32 = |k: &str| -> Result<u32> {
        u32::try_from(num(k)?).map_err(|_| bad(path, format!("metadata ctscope.{k} is out of range (over 2^32-1)")))
    };
    let source = SourceMap {
        pin: get("pin")?.clone(),
        name: get("name")?.clone(),
        id: num32("map_id")?,
        map_type: num32("map_type")?,
        key_size: num32("key_size")?,
        value_size: num32("value_size")?,
        max_entries: num32("max_entries")?,
        map_flags: num32("map_flags")?,
        map_extra: num("map_extra")?,
    };
    let expect_crc = u32::from_str_radix(get("crc32")?, 16).map_err(|_| bad(path, "metadata ctscope.crc32 is not hex"))?;
    let taken_ns = num("taken_realtime_ns")?;
    let (ks, vs) = (source.key_size as usize, source.value_size as usize);
    if ks == 0 || vs == 0 || i32::try_from(ks).is_err() || i32::try_from(vs).is_err() {
        return Err(bad(path, format!("metadata key_size {ks} / value_size {vs}: expected 1 to 2^31-1 bytes")));
    }
    let fields = schema.fields();
    let column_ok = |i: usize, name: &str, size: usize| {
        fields.get(i).is_some_and(|f| f.name() == name && f.data_type() == &DataType::FixedSizeBinary(size as i32))
    };
    if fields.len() != 2 || !column_ok(0, "key", ks) || !column_ok(1, "value", vs) {
        let got: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
        return Err(bad(path, format!(
            "columns [{}], expected [key: FixedSizeBinary({ks}), value: FixedSizeBinary({vs})]",
            got.join(", ")
        )));
    }
    // The entries' bytes are in the file: an entry count the file cannot hold is a lie.
    let expect_count = num("entries")?;
    let room = file_len as u64 / (ks as u64 + vs as u64);
    if expect_count > room {
        return Err(bad(path, format!(
            "metadata says {expect_count} entries of {ks}+{vs} bytes, more than the {file_len}-byte file can hold"
        )));
    }
    let expect_count = expect_count as usize;
    if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
        return Err(not_ipc("unexpected dictionary batches"));
    }
    let decoder = FileDecoder::new(schema.clone(), footer.version());
    let mut entries = Entries::new(ks, vs);
    entries.keys.reserve(expect_count * ks);
    entries.values.reserve(expect_count * vs);
    for (i, block) in footer.recordBatches().into_iter().flatten().enumerate() {
        let (off, mlen, blen) = (block.offset(), block.metaDataLength(), block.bodyLength());
        let end = (off >= 0 && mlen >= 0 && blen >= 0)
            .then(|| off.checked_add(i64::from(mlen))?.checked_add(blen))
            .flatten();
        if end.is_none_or(|e| e as u64 > trailer as u64 - footer_len as u64) {
            return Err(bad(path, format!("corrupt record batch {i}: offset {off} + {mlen} + {blen} lies outside the file")));
        }
        let part = buffer.slice_with_length(off as usize, mlen as usize + blen as usize);
        // arrow slices buffers with assertions: a buffer outside the block is a panic there.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.read_record_batch(block, &part)))
            .map_err(|_| bad(path, format!("corrupt record batch {i}: a buffer lies outside its block")))?;
        let batch = decoded
            .map_err(|e| bad(path, format!("corrupt record batch {i}: {e}")))?
            .ok_or_else(|| bad(path, format!("corrupt record batch {i}: not a record batch")))?;
        let col = |c: usize, size: usize| -> Result<FixedSizeBinaryArray> {
            let a = batch
                .column(c)
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .ok_or_else(|| bad(path, "columns are not FixedSizeBinary"))?;
            if a.value_length() as usize != size || a.value_data().len() < a.len() * size {
                return Err(bad(path, format!("column {c} does not hold {}-byte items", size)));
            }
            Ok(a.clone())
        };
        if batch.num_columns() != 2 {
            return Err(bad(path, format!("record batch {i} has {} columns, expected 2", batch.num_columns())));
        }
        let (k, v) = (col(0, ks)?, col(1, vs)?);
        let n = k.len();
        if v.len() != n || entries.count + n > expect_count {
            return Err(bad(path, format!("record batch {i} holds more entries than the metadata's {expect_count}")));
        }
        // value_data() is the sliced region of this array's buffer.
        entries.keys.extend_from_slice(&k.value_data()[..n * ks]);
        entries.values.extend_from_slice(&v.value_data()[..n * vs]);
        entries.count += n;
    }
    if entries.count != expect_count {
        return Err(bad(path, format!("holds {} entries, its metadata says {expect_count}: truncated", entries.count)));
    }
    let crc = entries.crc32();
    if crc != expect_crc {
        return Err(bad(path, format!("CRC-32 {crc:08x} of the entries does not match {expect_crc:08x}: the file is damaged")));
    }
    Ok(Backup { source, entries, taken_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Entries {
        let mut e = Entries::new(16, 88);
        for i in 0..n {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let v = [(i % 251) as u8; 88];
            e.push(&k, &v);
        }
        e
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = std::env::temp_dir().join(format!("ctscope-backup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.arrow");
        let _ = std::fs::remove_file(&path);
        let src = SourceMap { name: "cali_v4_ct4".into(), map_type: 9, key_size: 16, value_size: 88, max_entries: 1000, ..Default::default() };
        let e = sample(ROWS_PER_BATCH + 17);
        write(&path, &src, &e, 42).unwrap();
        assert!(write(&path, &src, &e, 42).is_err(), "never overwrites");
        // A default name taken by a concurrent run: the next number, never the same file.
        let (p2, _) = write_new(&path, &src, &e, 43, true).unwrap();
        assert_eq!(p2, dir.join("b-2.arrow"));
        assert_eq!(read(&path).unwrap().taken_ns, 42);
        std::fs::remove_file(&p2).unwrap();
        assert!(std::fs::read_dir(&dir).unwrap().all(|f| !f.unwrap().file_name().to_string_lossy().ends_with(".partial")));
        let b = read(&path).unwrap();
        assert_eq!(b.source, src);
        assert_eq!(b.entries.count, e.count);
        assert_eq!(b.entries.keys, e.keys);
        assert_eq!(b.entries.values, e.values);
        assert_eq!(b.taken_ns, 42);
        // The footer CRC (crate::ipc_file, as snapshots) covers every byte before the footer:
        // a flip in the padding after the leading magic, which no entry CRC sees, is refused.
        let bytes = std::fs::read(&path).unwrap();
        let m = crate::ipc_file::read_metadata(&bytes[..], "b", true).unwrap();
        assert!(m.crc.is_some() && m.schema_metadata.contains_key("ctscope.crc32"), "both CRCs (older readers use the second)");
        let mut flipped = bytes.clone();
        flipped[9] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(read(&path).err().is_some_and(|e| e.to_string().contains("CRC-32")));
        // Truncation is refused.
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(read(&path).is_err());
        // Empty maps back up too.
        let p2 = dir.join("empty.arrow");
        let _ = std::fs::remove_file(&p2);
        write(&p2, &src, &Entries::new(16, 88), 1).unwrap();
        assert_eq!(read(&p2).unwrap().entries.count, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
