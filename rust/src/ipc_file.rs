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
        for (k, v) in metadata {
            self.w.write_metadata(k.as_str(), v.as_str());
        }
        // The CRC covers the end-of-stream marker that `finish` writes next: hash it now
        // (the footer must carry the CRC), and check below that `finish` wrote exactly it.
        let sink = self.w.get_mut();
        let mut h = sink.hasher.clone();
        h.update(&EOS);
        sink.stopped = Some(Vec::with_capacity(8));
        self.w.write_metadata(CRC_KEY, format!("{:08x}", h.finalize()));
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
    let own = kv(footer.custom_metadata().into_iter().flatten());
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
    Ok(FileMeta { metadata, schema_metadata, crc, data_end })
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
    fn a_batch_of_other_columns_is_refused() {
        let (_, schema) = sample();
        let other = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, true)]));
        let mut w = IpcFileWriter::try_new(Vec::new(), &schema).unwrap();
        let b = RecordBatch::try_new(other, vec![Arc::new(arrow_array::Int32Array::from(vec![1]))]).unwrap();
        assert!(w.write(&b).unwrap_err().to_string().contains("expected [n: Int64, s: Utf8View]"));
    }
}
