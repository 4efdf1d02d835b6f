//! Arrow IPC files that carry ctscope metadata and a CRC: Arrow snapshots (`dump -o X.arrow`,
//! `snapshot`, analysis results) and backups. The one owner of that convention:
//!
//! * written by arrow-rs' `FileWriter`; the schema (the leading Schema message, and its copy
//!   in the footer) carries the metadata known before the first batch (provisional), the
//!   footer's own `custom_metadata` the final metadata (entry count, dump end) plus
//!   [`CRC_KEY`];
//! * [`CRC_KEY`] is CRC-32 (zlib's) of the bytes from offset 8 (after the leading magic and
//!   its padding) up to the footer, the end-of-stream marker included, as 8 hex digits.
//!   IPC has no checksums of its own: damage inside a batch would otherwise be read as data.
//! * [`META_CRC_KEY`], also in the footer, covers the footer's other metadata (the data CRC
//!   cannot cover the footer it is written in), and readers check that the footer's copy
//!   of the schema, which the batches are decoded by, is the leading Schema message's
//!   (covered by the data CRC): no byte of a file's footer changes what is read unseen.
//!
//! Readers ([`read_metadata`]) take the footer's `custom_metadata` when it has any, else the
//! footer schema's: files of earlier ctscope versions (a hand-written Python writer) kept everything, the CRC
//! too, in the footer schema's metadata, and still read and verify.
//!
//! Arrow format references: File.fbs (Footer, Block), Message.fbs, "IPC File Format".

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use arrow_array::RecordBatch;
use arrow_ipc::writer::FileWriter;
use arrow_ipc::{root_as_footer, root_as_message, MessageHeader};
use arrow_schema::{ArrowError, DataType, Schema, SchemaRef};

use crate::error::{CtError, Result};

/// Footer metadata key: CRC-32 of bytes 8 .. footer start, 8 lowercase hex digits.
pub const CRC_KEY: &str = "ctscope_crc32";
/// Footer metadata key: CRC-32 of the footer's other metadata (see [`meta_crc`]). The data
/// CRC cannot cover the footer it is written in; without this, a flipped byte in `now_ns`,
/// `entries` or a backup's map parameters would be read as true.
pub const META_CRC_KEY: &str = "ctscope_meta_crc32";

/// CRC-32 of metadata pairs in key order, each as key, NUL, value, NUL ([`META_CRC_KEY`]
/// itself left out).
pub fn meta_crc<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> u32 {
    let mut sorted: Vec<(&str, &str)> = pairs.into_iter().filter(|(k, _)| *k != META_CRC_KEY).collect();
    sorted.sort_unstable();
    let mut h = crc32fast::Hasher::new();
    for (k, v) in sorted {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.finalize()
}
const MAGIC: &[u8; 6] = b"ARROW1";
const CONTINUATION: u32 = 0xFFFF_FFFF;
/// What `FileWriter::finish` writes before the footer (metadata V5: continuation, length 0).
const EOS: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// Counts the bytes it passes on and hashes those from offset 8 on; once `stop` is called
/// it keeps the next 8 bytes instead, so the caller can check they were [`EOS`].
struct CrcWriter<W> {
    inner: W,
    pos: u64,
    hasher: crc32fast::Hasher,
    stopped: Option<Vec<u8>>,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = &buf[..n];
        match &mut self.stopped {
            None => {
                let skip = 8u64.saturating_sub(self.pos).min(n as u64) as usize;
                self.hasher.update(&done[skip..]);
            }
            Some(tail) => {
                let room = 8 - tail.len().min(8);
                tail.extend_from_slice(&done[..room.min(n)]);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An Arrow IPC file being written: `try_new` (schema with the provisional metadata), any
/// number of `write`s, then `finish` with the final metadata.
pub struct IpcFileWriter<W: Write> {
    w: FileWriter<CrcWriter<W>>,
    rows: u64,
}

impl<W: Write> IpcFileWriter<W> {
    /// Start the file: magic and the Schema message, whose metadata is `schema`'s.
    pub fn try_new(out: W, schema: &Schema) -> std::result::Result<Self, ArrowError> {
        let crc = CrcWriter { inner: out, pos: 0, hasher: crc32fast::Hasher::new(), stopped: None };
        Ok(IpcFileWriter { w: FileWriter::try_new(crc, schema)?, rows: 0 })
    }

    pub fn schema(&self) -> &SchemaRef {
        self.w.schema()
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Append one record batch; it must have the file's column names and types.
    pub fn write(&mut self, batch: &RecordBatch) -> std::result::Result<(), ArrowError> {
        let (want, got) = (self.w.schema().fields(), batch.schema_ref().fields());
        if want.len() != got.len() || want.iter().zip(got.iter()).any(|(a, b)| a.name() != b.name() || a.data_type() != b.data_type()) {
            let show = |f: &arrow_schema::Fields| f.iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ");
            return Err(ArrowError::SchemaError(format!("a batch with columns [{}], expected [{}]", show(got), show(want))));
        }
        self.w.write(batch)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Write the end-of-stream marker and the footer with `metadata` plus [`CRC_KEY`];
    /// returns the output and the file's length.
    pub fn finish<'a>(
        mut self,
        metadata: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> std::result::Result<(W, u64), ArrowError> {
        let mut written: Vec<(String, String)> = Vec::new();
        for (k, v) in metadata {
            self.w.write_metadata(k.as_str(), v.as_str());
            written.push((k.clone(), v.clone()));
        }
        // The CRC covers the end-of-stream marker that `finish` writes next: hash it now
        // (the footer must carry the CRC), and check below that `finish` wrote exactly it.
        let sink = self.w.get_mut();
        let mut h = sink.hasher.clone();
        h.update(&EOS);
        sink.stopped = Some(Vec::with_capacity(8));
        let crc = format!("{:08x}", h.finalize());
        self.w.write_metadata(CRC_KEY, &crc);
        written.push((CRC_KEY.to_string(), crc));
        let meta = meta_crc(written.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.w.write_metadata(META_CRC_KEY, format!("{meta:08x}"));
        self.w.finish()?;
        let sink = self.w.into_inner()?;
        if sink.stopped.as_deref() != Some(&EOS[..]) {
            return Err(ArrowError::IpcError(format!(
                "arrow-rs wrote {:02x?} before the footer, not the end-of-stream marker the CRC covers",
                sink.stopped
            )));
        }
        Ok((sink.inner, sink.pos))
    }
}

/// `fields` with `metadata` as the schema's metadata; refuses dictionary-encoded columns
/// (polars' categoricals: each frame has its own dictionary, which an IPC file cannot replace).
pub fn schema_with(fields: &arrow_schema::Fields, metadata: HashMap<String, String>) -> Result<Schema> {
    fn has_dict(t: &DataType) -> bool {
        match t {
            DataType::Dictionary(..) => true,
            DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::LargeListView(f)
            | DataType::FixedSizeList(f, _) | DataType::Map(f, _) => has_dict(f.data_type()),
            DataType::Struct(fs) => fs.iter().any(|f| has_dict(f.data_type())),
            _ => false,
        }
    }
    if fields.iter().any(|f| has_dict(f.data_type())) {
        return Err(CtError::BadArgument(
            "dictionary-encoded (categorical) columns are not supported in Arrow snapshots".into(),
        ));
    }
    Ok(Schema::new_with_metadata(fields.clone(), metadata))
}

/// Random access to a file's bytes: an open file, or a file already in memory.
pub trait Bytes {
    fn size(&self) -> io::Result<u64>;
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
}

impl Bytes for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.read_exact_at(buf, off)
    }
}

impl Bytes for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let s = usize::try_from(off).ok().filter(|&s| s <= self.len() && self.len() - s >= buf.len());
        let s = s.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&self[s..s + buf.len()]);
        Ok(())
    }
}

/// What an Arrow IPC file's footer says, its structure checked.
#[derive(Debug, Default)]
pub struct FileMeta {
    /// The footer's custom_metadata, else its schema's; without [`CRC_KEY`].
    pub metadata: HashMap<String, String>,
    /// The footer schema's metadata (older backups keep everything there).
    pub schema_metadata: HashMap<String, String>,
    /// [`CRC_KEY`]'s value, when the file records one.
    pub crc: Option<String>,
    /// Where the footer starts (the CRC covers bytes 8 .. this).
    pub data_end: u64,
}

fn kv<'a>(v: impl Iterator<Item = arrow_ipc::KeyValue<'a>>) -> HashMap<String, String> {
    v.map(|kv| (kv.key().unwrap_or("").to_string(), kv.value().unwrap_or("").to_string())).collect()
}

/// The metadata of the Arrow IPC file `src` (named `shown` in errors), after checking its
/// structure: magic at both ends, a footer inside the file, and every block the footer
/// lists inside the data, starting with a record (or dictionary) batch message of the
/// recorded lengths. Reads only the footer and the block headers; with `verify`, also every
/// byte the CRC covers, and a mismatch is an error. Nothing is allocated by a length from
/// the file before that length is checked against the file's size.
pub fn read_metadata<B: Bytes + ?Sized>(src: &B, shown: &str, verify: bool) -> Result<FileMeta> {
    let bad = |what: String| CtError::BadArgument(format!("{shown}: {what}"));
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad("truncated Arrow IPC file".into()),
        _ => CtError::os(format!("{shown}: reading"), e),
    };
    let size = src.size().map_err(io_err)?;
    let mut head = [0u8; 6];
    if size < 6 + 2 + 10 || src.read_at(&mut head, 0).is_err() || &head != MAGIC {
        return Err(bad("not an Arrow IPC file (no ARROW1 magic at the start)".into()));
    }
    let mut tail = [0u8; 10];
    src.read_at(&mut tail, size - 10).map_err(io_err)?;
    if &tail[4..] != MAGIC {
        return Err(bad("truncated Arrow IPC file (no ARROW1 magic at the end)".into()));
    }
    let flen = i32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
    if flen <= 0 || flen as u64 > size - 18 {
        return Err(bad("corrupt Arrow IPC footer length".into()));
    }
    let data_end = size - 10 - flen as u64;
    let mut fbuf = vec![0u8; flen as usize];
    src.read_at(&mut fbuf, data_end).map_err(io_err)?;
    let footer = root_as_footer(&fbuf).map_err(|e| bad(format!("corrupt Arrow IPC footer ({})", one_line(&e))))?;
    let schema_metadata = kv(footer.schema().and_then(|s| s.custom_metadata()).into_iter().flatten());
    let mut own = kv(footer.custom_metadata().into_iter().flatten());
    if own.contains_key(CRC_KEY) || own.contains_key(META_CRC_KEY) {
        // Written by this module: the footer's metadata carries its own CRC (always checked:
        // it is the footer alone). A damaged key name makes one missing, which is as bad;
        // other writers' footer metadata (no ctscope key) is read as it is.
        let got = meta_crc(own.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        match own.remove(META_CRC_KEY) {
            Some(want) if want == format!("{got:08x}") => {}
            Some(want) => {
                return Err(bad(format!(
                    "corrupt Arrow IPC footer (CRC-32 {got:08x} of its metadata, the footer records {want})"
                )));
            }
            None => return Err(bad(format!("corrupt Arrow IPC footer (no {META_CRC_KEY} for its metadata)"))),
        }
    }
    let mut metadata = if own.is_empty() { schema_metadata.clone() } else { own };
    let blocks = footer.dictionaries().into_iter().flatten().chain(footer.recordBatches().into_iter().flatten());
    let mut msg = Vec::new();
    for b in blocks {
        let (off, mlen, blen) = (b.offset(), i64::from(b.metaDataLength()), b.bodyLength());
        let inside = off >= 8 && mlen >= 8 && blen >= 0
            && off.checked_add(mlen).and_then(|e| e.checked_add(blen)).is_some_and(|e| e as u64 <= data_end);
        if !inside {
            return Err(bad("corrupt Arrow IPC file (a record batch lies outside the file)".into()));
        }
        let mut h = [0u8; 8];
        src.read_at(&mut h, off as u64).map_err(io_err)?;
        let word = u32::from_le_bytes(h[..4].try_into().expect("4 bytes"));
        let n = i32::from_le_bytes(h[4..].try_into().expect("4 bytes"));
        // Since Arrow 0.15 a message starts with a continuation marker; before, with its length.
        let prefix = if word == CONTINUATION && i64::from(n) == mlen - 8 {
            8
        } else if word != CONTINUATION && i64::from(word) == mlen - 4 {
            4
        } else {
            return Err(bad(format!("corrupt Arrow IPC file (no record batch header at offset {off})")));
        };
        msg.resize((mlen - prefix) as usize, 0); // mlen <= data_end: checked above
        src.read_at(&mut msg, off as u64 + prefix as u64).map_err(io_err)?;
        let ok = root_as_message(&msg).is_ok_and(|m| {
            matches!(m.header_type(), MessageHeader::RecordBatch | MessageHeader::DictionaryBatch) && m.bodyLength() == blen
        });
        if !ok {
            return Err(bad(format!("corrupt Arrow IPC file (bad record batch header at offset {off})")));
        }
    }
    let crc = metadata.remove(CRC_KEY);
    if verify && let Some(want) = &crc {
        let got = crc_of(src, data_end).map_err(io_err)?;
        if format!("{got:08x}") != *want {
            return Err(bad(format!("corrupt Arrow IPC file (CRC-32 {got:08x} of its batches, the footer records {want})")));
        }
    }
    // The footer's schema is what readers decode the batches by, and no CRC covers it: it
    // must be the leading Schema message's (which the data CRC covers), metadata aside.
    // (After the CRC: damage before the footer is named as such.)
    let fields = |s: Option<arrow_ipc::Schema>| {
        s.and_then(|s| arrow_ipc::convert::try_fb_to_schema(s).ok()).map(|s| s.fields().clone())
    };
    let footer_fields = fields(footer.schema());
    let leading = leading_schema(src, data_end).map_err(io_err)?;
    let leading_fields = leading.as_deref().and_then(|m| root_as_message(m).ok()).and_then(|m| fields(m.header_as_schema()));
    if footer_fields.is_none() || footer_fields != leading_fields {
        return Err(bad("corrupt Arrow IPC file (its footer's schema is not the one its data starts with)".into()));
    }
    Ok(FileMeta { metadata, schema_metadata, crc, data_end })
}

/// The flatbuffer of the file's leading (Schema) message: the first after the magic and
/// its zero padding (8 bytes from earlier ctscope versions, 64 from arrow-rs), if its
/// length fits before `end`.
fn leading_schema<B: Bytes + ?Sized>(src: &B, end: u64) -> io::Result<Option<Vec<u8>>> {
    let mut h = [0u8; 8];
    let mut at = 8;
    loop {
        if at + 8 > end || at > 1024 {
            return Ok(None);
        }
        src.read_at(&mut h, at)?;
        if h != [0u8; 8] {
            break;
        }
        at += 8;
    }
    let word = u32::from_le_bytes(h[..4].try_into().expect("4 bytes"));
    let (start, len) = if word == CONTINUATION {
        (at + 8, u64::from(u32::from_le_bytes(h[4..].try_into().expect("4 bytes"))))
    } else {
        (at + 4, u64::from(word)) // before Arrow 0.15: the length alone
    };
    if len == 0 || start + len > end {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize]; // len < end <= the file's size: checked above
    src.read_at(&mut buf, start)?;
    Ok(Some(buf))
}

/// CRC-32 of bytes 8 .. `end` of `src`.
fn crc_of<B: Bytes + ?Sized>(src: &B, end: u64) -> io::Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; (1 << 22).min(end.saturating_sub(8)) as usize];
    let mut pos = 8;
    while pos < end {
        let n = buf.len().min((end - pos) as usize);
        src.read_at(&mut buf[..n], pos)?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h.finalize())
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 200 { format!("{}…", s.chars().take(200).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use arrow_array::{Int64Array, StringViewArray};
    use arrow_schema::Field;

    fn batch(schema: &SchemaRef, n: i64) -> RecordBatch {
        let a = Int64Array::from_iter_values(0..n);
        let s = StringViewArray::from_iter_values((0..n).map(|i| format!("a fairly long string number {i}")));
        RecordBatch::try_new(schema.clone(), vec![Arc::new(a), Arc::new(s)]).unwrap()
    }

    fn sample() -> (Vec<u8>, SchemaRef) {
        let fields = arrow_schema::Fields::from(vec![Field::new("n", DataType::Int64, true), Field::new("s", DataType::Utf8View, true)]);
        let schema = Arc::new(schema_with(&fields, [("k".to_string(), "provisional".to_string())].into()).unwrap());
        let mut w = IpcFileWriter::try_new(Vec::new(), &schema).unwrap();
        w.write(&batch(&schema, 1000)).unwrap();
        w.write(&batch(&schema, 7)).unwrap();
        assert_eq!(w.rows(), 1007);
        let fin: HashMap<String, String> = [("k".to_string(), "final".to_string())].into();
        let (out, len) = w.finish(&fin).unwrap();
        assert_eq!(len as usize, out.len());
        (out, schema)
    }

    #[test]
    fn footer_has_the_final_metadata_and_a_crc_of_bytes_8_to_the_footer() {
        let (data, schema) = sample();
        let m = read_metadata(&data[..], "x", true).unwrap();
        assert_eq!(m.metadata, HashMap::from([("k".to_string(), "final".to_string())]));
        assert_eq!(m.schema_metadata, HashMap::from([("k".to_string(), "provisional".to_string())]));
        let end = m.data_end as usize;
        assert_eq!(&data[end - 8..end], &EOS, "the end-of-stream marker right before the footer");
        assert_eq!(m.crc.unwrap(), format!("{:08x}", crc32fast::hash(&data[8..end])));
        // arrow-rs reads it back whole.
        let r = arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(data.clone()), None).unwrap();
        assert_eq!(r.schema().metadata()["k"], "provisional");
        assert_eq!(r.custom_metadata()["k"], "final");
        let rows: usize = r.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 1007);
        let _ = schema;
    }

    #[test]
    fn damage_is_caught() {
        let (data, _) = sample();
        let m = read_metadata(&data[..], "x", false).unwrap();
        let mut bad = data.clone();
        bad[m.data_end as usize / 2] ^= 1;
        let e = read_metadata(&bad[..], "x.arrow", true).unwrap_err().to_string();
        assert!(e.starts_with("x.arrow: corrupt Arrow IPC file (CRC-32"), "{e}");
        assert!(read_metadata(&bad[..], "x", false).is_ok(), "structure intact: only the CRC sees it");
        for cut in [0, 10, data.len() / 2, data.len() - 5] {
            assert!(read_metadata(&data[..cut], "x", false).is_err(), "cut at {cut}");
        }
        let mut flipped = data.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x5a;
            let _ = read_metadata(&flipped[..], "x", true); // never a panic
            flipped[i] ^= 0x5a;
        }
    }

    #[test]
    fn no_byte_of_the_footer_can_change_the_metadata_unseen() {
        let (data, _) = sample();
        let m = read_metadata(&data[..], "x", true).unwrap();
        let mut flipped = data.clone();
        let mut caught = 0;
        for i in m.data_end as usize..data.len() {
            for bit in [0x01u8, 0x80] {
                flipped[i] ^= bit;
                match read_metadata(&flipped[..], "x", true) {
                    Err(_) => caught += 1,
                    Ok(got) => assert!(
                        got.metadata == m.metadata && got.crc == m.crc,
                        "a flip of byte {i} changed the metadata unseen: {:?}",
                        got.metadata
                    ),
                }
                flipped[i] ^= bit;
            }
        }
        assert!(caught > 0);
        // nor the schema the batches are decoded by: a flip in the footer's copy of it
        let fb = &data[m.data_end as usize..data.len() - 10];
        // a flatbuffer string: u32 length 1, "s", NUL
        let at = m.data_end as usize + fb.windows(6).position(|w| w == b"\x01\0\0\0s\0").unwrap() + 4;
        let mut renamed = data.clone();
        renamed[at] = b't'; // the field "s" is now "t" in the footer only
        let e = read_metadata(&renamed[..], "x.arrow", false).unwrap_err().to_string();
        assert!(e.contains("its footer's schema is not the one its data starts with"), "{e}");
        // the metadata's CRC names what it saw
        let at = data.windows(5).rposition(|w| w == b"final").unwrap();
        flipped[at] = b'F';
        let e = read_metadata(&flipped[..], "x.arrow", false).unwrap_err().to_string();
        assert!(e.starts_with("x.arrow: corrupt Arrow IPC footer (CRC-32"), "{e}");
    }

    #[test]
    fn a_batch_of_other_columns_is_refused() {
        let (_, schema) = sample();
        let other = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, true)]));
        let mut w = IpcFileWriter::try_new(Vec::new(), &schema).unwrap();
        let b = RecordBatch::try_new(other, vec![Arc::new(arrow_array::Int32Array::from(vec![1]))]).unwrap();
        assert!(w.write(&b).unwrap_err().to_string().contains("expected [n: Int64, s: Utf8View]"));
    }
}
