//! Parquet files ctscope writes (`dump -o X.parquet`, `snapshot`, analysis results): the one
//! owner of how they are encoded.
//!
//! * arrow-rs' `ArrowWriter`, fed the decoder's own record batches (a dump never becomes a
//!   polars frame on its way to disk) or frames imported through the Arrow C stream;
//! * zstd at level 1 ([`ZSTD_LEVEL`]): on CT dumps the same size as level 3 for less CPU;
//! * row groups of [`ROW_GROUP_ROWS`] rows, so a reader that wants a slice (a chunked
//!   `stats`, a `head`) reads only the row groups it needs;
//! * every column optional (nullable), as polars writes them: snapshot sets written by
//!   earlier ctscope versions (polars' writer) and by this one scan together;
//! * no min/max statistics (in hash order they prune nothing), and no compression for the
//!   columns zstd cannot shrink ([`UNCOMPRESSED_COLUMNS`]);
//! * the key/value metadata (the `ctscope` JSON a snapshot records) goes in the footer when
//!   the file is finished, once the entry count is known.
//!
//! Parquet carries its own CRC-free structure (page headers, footer length and magic), and
//! readers (polars, DuckDB, Spark) check it; ctscope adds no CRC to parquet files.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;

/// zstd level of every parquet file ctscope writes.
pub const ZSTD_LEVEL: i32 = 1;
/// Rows per row group.
pub const ROW_GROUP_ROWS: usize = 262_144;

/// `fields`, every one (and every list item) nullable.
pub fn nullable_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    Arc::new(Schema::new(fields))
}

fn properties(schema: &Schema) -> Result<WriterProperties, ParquetError> {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // A column whose distinct values outgrow this falls back to plain encoding early
        // (addresses, counters, times on a busy node); enumerations, ports and flags keep
        // their dictionaries. Interning a million addresses into a dictionary that is then
        // thrown away was a third of the encoding time.
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_LIMIT)
        // No statistics: a map's entries are in hash order, so a row group's smallest and
        // largest address, port or time span nearly all of them and prune nothing, while
        // comparing every value to them cost 2-3 % of a dump's CPU.
        .set_statistics_enabled(EnabledStatistics::None)
        // Fewer, longer mini-batches per column (1,024 values by default).
        .set_write_batch_size(WRITE_BATCH_SIZE)
        .set_created_by(format!("ctscope {} (parquet-rs)", env!("CARGO_PKG_VERSION")));
    for col in ArrowSchemaConverter::new().convert(schema)?.columns() {
        if UNCOMPRESSED_COLUMNS.contains(&col.path().string().as_str()) {
            b = b.set_column_compression(col.path().clone(), Compression::UNCOMPRESSED);
        }
    }
    Ok(b.build())
}

/// Values each column writer takes at a time.
const WRITE_BATCH_SIZE: usize = 8192;

/// Columns zstd shrinks by under 10 % on a node-like map (`synth --profile node`), left
/// uncompressed: TCP sequence numbers are random (RFC 6528), `idle_s` is a float of
/// nanosecond differences, and the others' pages are mostly dictionary indices, already
/// bit-packed. Compressing them was a sixth of zstd's input for 1.4 % of the file's size.
pub const UNCOMPRESSED_COLUMNS: &[&str] =
    &["a2b_seqno", "b2a_seqno", "idle_s", "a2b_packets", "b2a_packets", "sport", "a2b_ifindex", "b2a_ifindex", "tcp_state"];

/// Bytes a column chunk's dictionary may reach before the column is written plain.
pub const DICTIONARY_PAGE_LIMIT: usize = 64 * 1024;

/// Messages to an encoding worker.
enum Job {
    /// Column writers for a new row group: (leaf index, writer) of the worker's fields.
    Start(Vec<(usize, ArrowColumnWriter)>),
    /// Rows of the current row group (the worker encodes its own fields of them).
    Rows(RecordBatch),
    /// Close the row group's writers and send their chunks back.
    Close,
}

type Chunks = Result<Vec<(usize, ArrowColumnChunk)>, ParquetError>;

/// A thread that encodes some of the file's columns (`fields`, top-level indices).
struct Worker {
    jobs: SyncSender<Job>,
    chunks: Receiver<Chunks>,
    handle: Option<JoinHandle<()>>,
    fields: Vec<usize>,
}

impl Worker {
    fn spawn(n: usize, schema: SchemaRef, fields: Vec<usize>) -> Result<Worker, ParquetError> {
        // Two row-group pieces in flight per worker at most: memory stays bounded.
        let (jobs, rx) = sync_channel::<Job>(2);
        let (tx, chunks) = sync_channel::<Chunks>(1);
        let mine = fields.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ctscope-pq{n}"))
            .spawn(move || encode_columns(&schema, &mine, rx, tx))
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(Worker { jobs, chunks, handle: Some(handle), fields })
    }

    fn send(&self, job: Job) -> Result<(), ParquetError> {
        self.jobs.send(job).map_err(|_| ParquetError::General("a parquet encoding thread ended early".into()))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Hang up, then wait: no thread outlives the writer (or the interpreter).
        let (dead, _) = sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A worker's loop: encode `fields` of each batch; the first error is kept and reported at
/// Close (the rest of the row group is skipped). A panic is caught and reported the same way.
fn encode_columns(schema: &Schema, fields: &[usize], jobs: Receiver<Job>, chunks: SyncSender<Chunks>) {
    let mut writers: Vec<(usize, ArrowColumnWriter)> = Vec::new();
    let mut failed: Option<ParquetError> = None;
    for job in jobs {
        match job {
            Job::Start(w) => writers = w,
            Job::Rows(batch) if failed.is_none() => {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut w = writers.iter_mut();
                    for &f in fields {
                        for leaf in compute_leaves(schema.field(f), batch.column(f))? {
                            let (_, writer) = w.next().ok_or_else(|| ParquetError::General("parquet leaf columns out of step".into()))?;
                            writer.write(&leaf)?;
                        }
                    }
                    Ok::<_, ParquetError>(())
                }));
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed = Some(e),
                    Err(_) => failed = Some(ParquetError::General("a parquet encoding thread panicked".into())),
                }
            }
            Job::Rows(_) => {}
            Job::Close => {
                let out = match failed.take() {
                    Some(e) => {
                        writers.clear();
                        Err(e)
                    }
                    None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        std::mem::take(&mut writers).into_iter().map(|(i, w)| w.close().map(|c| (i, c))).collect::<Chunks>()
                    }))
                    .unwrap_or_else(|_| Err(ParquetError::General("a parquet encoding thread panicked".into()))),
                };
                if chunks.send(out).is_err() {
                    return;
                }
            }
        }
    }
}

/// A parquet file being written. The columns are encoded by worker threads, each owning a
/// share of them (balanced by a rough cost per type), while the caller's thread goes on
/// reading: on a 2-core node the encoder is no longer one thread behind two readers.
pub struct ParquetFileWriter<W: Write + Send> {
    file: SerializedFileWriter<W>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    workers: Vec<Worker>,
    /// Index of each field's first leaf column, and the leaf count at the end (a list
    /// field's leaves follow one another).
    first_leaf: Vec<usize>,
    group_limit: usize,
    /// Rows in the row group being encoded (0: none started).
    group_rows: usize,
    row_groups: usize,
    rows: u64,
}

/// Rough encoding cost of a column, to share columns out evenly.
fn cost(t: &DataType) -> usize {
    match t {
        DataType::Utf8View | DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::BinaryView | DataType::LargeBinary => 4,
        DataType::List(_) | DataType::LargeList(_) => 3,
        DataType::Boolean => 1,
        t if t.primitive_width().unwrap_or(8) >= 8 => 3,
        _ => 2,
    }
}

/// How many encoding threads: the cores, at most 4.
fn encoder_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
}

impl<W: Write + Send> ParquetFileWriter<W> {
    /// A file whose columns are `schema`'s (made nullable, see the module doc).
    pub fn try_new(out: W, schema: &Schema) -> Result<Self, ParquetError> {
        Self::with_options(out, schema, encoder_threads(), ROW_GROUP_ROWS)
    }

    /// As `try_new`, with `threads` encoding threads and row groups of `group_limit` rows.
    pub fn with_options(out: W, schema: &Schema, threads: usize, group_limit: usize) -> Result<Self, ParquetError> {
        let schema = nullable_schema(schema);
        // ArrowWriter records the Arrow schema in the file's metadata (readers take their
        // types from it); its lower-level parts are then driven here.
        let (file, factory) = ArrowWriter::try_new(out, schema.clone(), Some(properties(&schema)?))?.into_serialized_writer()?;
        // Fields to threads, heaviest first, each to the least loaded.
        let n = threads.clamp(1, schema.fields().len().max(1));
        let mut order: Vec<usize> = (0..schema.fields().len()).collect();
        order.sort_by_key(|&f| std::cmp::Reverse(cost(schema.field(f).data_type())));
        let mut shares: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); n];
        for f in order {
            let s = shares.iter_mut().min_by_key(|(load, _)| *load).expect("n >= 1");
            s.0 += cost(schema.field(f).data_type());
            s.1.push(f);
        }
        let mut first_leaf = Vec::with_capacity(schema.fields().len() + 1);
        let mut leaf = 0;
        for f in schema.fields() {
            first_leaf.push(leaf);
            leaf += compute_leaves(f, &arrow_array::new_empty_array(f.data_type()))?.len();
        }
        first_leaf.push(leaf);
        let mut workers = Vec::with_capacity(n);
        for (i, (_, mut fields)) in shares.into_iter().enumerate() {
            fields.sort_unstable();
            workers.push(Worker::spawn(i, schema.clone(), fields)?);
        }
        Ok(ParquetFileWriter { file, factory, schema, workers, first_leaf, group_limit: group_limit.max(1), group_rows: 0, row_groups: 0, rows: 0 })
    }

    /// Append `batch`, whose columns must be the file's (by name and type, in order).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let same = batch.schema().fields().len() == self.schema.fields().len()
            && batch.schema().fields().iter().zip(self.schema.fields()).all(|(a, b)| a.name() == b.name());
        if !same {
            return Err(ParquetError::General(format!(
                "a batch's columns ({}) are not the file's",
                batch.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        // Same arrays under the file's (nullable) schema; try_new checks the types.
        let mut rest = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())?;
        while rest.num_rows() > 0 {
            if self.group_rows == 0 {
                self.start_group()?;
            }
            let take = rest.num_rows().min(self.group_limit - self.group_rows);
            let piece = rest.slice(0, take);
            rest = rest.slice(take, rest.num_rows() - take);
            for w in &self.workers {
                w.send(Job::Rows(piece.clone()))?;
            }
            self.group_rows += take;
            self.rows += take as u64;
            if self.group_rows == self.group_limit {
                self.close_group()?;
            }
        }
        Ok(())
    }

    fn start_group(&mut self) -> Result<(), ParquetError> {
        let mut writers: Vec<Option<ArrowColumnWriter>> =
            self.factory.create_column_writers(self.row_groups)?.into_iter().map(Some).collect();
        if self.first_leaf.last() != Some(&writers.len()) {
            return Err(ParquetError::General(format!("{} parquet column writers for {:?} leaves", writers.len(), self.first_leaf.last())));
        }
        for w in &self.workers {
            let mine = w
                .fields
                .iter()
                .flat_map(|&f| self.first_leaf[f]..self.first_leaf[f + 1])
                .map(|i| (i, writers[i].take().expect("each leaf to one worker")))
                .collect();
            w.send(Job::Start(mine))?;
        }
        self.row_groups += 1;
        Ok(())
    }

    /// Collect the row group's column chunks from the workers and write them in order.
    fn close_group(&mut self) -> Result<(), ParquetError> {
        for w in &self.workers {
            w.send(Job::Close)?;
        }
        let mut all = Vec::new();
        let mut first_err = None;
        for w in &self.workers {
            match w.chunks.recv() {
                Ok(Ok(c)) => all.extend(c),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(ParquetError::General("a parquet encoding thread ended early".into()))),
            }
        }
        self.group_rows = 0;
        if let Some(e) = first_err {
            return Err(e);
        }
        all.sort_unstable_by_key(|(i, _)| *i);
        let mut rg = self.file.next_row_group()?;
        for (_, chunk) in all {
            chunk.append_to_row_group(&mut rg)?;
        }
        rg.close()?;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The file's columns (every one nullable).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Write the last row group and the footer with `metadata`; returns the output (not
    /// yet flushed, so the caller sees its errors).
    pub fn finish(mut self, metadata: &HashMap<String, String>) -> Result<W, ParquetError> {
        if self.group_rows > 0 {
            self.close_group()?;
        }
        let mut kv: Vec<(&String, &String)> = metadata.iter().collect();
        kv.sort(); // the same metadata, the same bytes
        for (k, v) in kv {
            self.file.append_key_value_metadata(KeyValue::new(k.clone(), v.clone()));
        }
        self.workers.clear(); // joined
        self.file.into_inner() // the footer
    }
}

/// The I/O error under a parquet error, if it is one (its errno names what went wrong: a
/// full disk, a reader that went away).
pub fn io_error(e: ParquetError) -> Result<std::io::Error, ParquetError> {
    match e {
        ParquetError::External(b) => match b.downcast::<std::io::Error>() {
            Ok(io) => Ok(*io),
            Err(other) => Err(ParquetError::External(other)),
        },
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringViewBuilder};
    use arrow_array::{Array, ArrayRef, StringViewArray, UInt16Array, UInt64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn batch(from: u32, n: u32) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("dport", DataType::UInt16, false),
            Field::new("dst", DataType::Utf8View, false),
            Field::new("flag_names", DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true))), false),
            Field::new("a2b_seqno", DataType::UInt64, false),
        ]));
        let ports: ArrayRef = Arc::new(UInt16Array::from_iter_values((from..from + n).map(|i| (i % 70) as u16)));
        let addrs: ArrayRef = Arc::new(StringViewArray::from_iter_values((from..from + n).map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))));
        let mut flags = ListBuilder::new(StringViewBuilder::new());
        for i in from..from + n {
            for k in 0..i % 3 {
                flags.values().append_value(["NAT_FWD", "SKIP_FIB", "DSR"][k as usize]);
            }
            flags.append(true);
        }
        let flags: ArrayRef = Arc::new(flags.finish());
        let seen: ArrayRef = Arc::new(UInt64Array::from_iter_values((from..from + n).map(|i| u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15))));
        RecordBatch::try_new(schema, vec![ports, addrs, flags, seen]).unwrap()
    }

    fn read_back(bytes: Vec<u8>) -> (Vec<RecordBatch>, parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder<bytes::Bytes>) {
        let r = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes.clone())).unwrap();
        let again = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        (r.build().unwrap().map(|b| b.unwrap()).collect(), again)
    }

    #[test]
    fn round_trips_rows_metadata_and_row_groups_whatever_the_threads() {
        // 2,500 rows in odd-sized batches, row groups of 1,000: every thread count writes
        // the same rows, in order, in 3 row groups, with the metadata and nullable columns.
        let mut want = Vec::new();
        let mut from = 0;
        for n in [0, 1, 999, 2, 1200, 298] {
            want.push(batch(from, n));
            from += n;
        }
        let want = arrow_select::concat::concat_batches(&want[1].schema(), &want).unwrap();
        for threads in [1, 2, 3, 7] {
            let mut w = ParquetFileWriter::with_options(Vec::new(), &want.schema(), threads, 1000).unwrap();
            let mut from = 0;
            for n in [0, 1, 999, 2, 1200, 298] {
                w.write(&batch(from, n)).unwrap();
                from += n;
            }
            assert_eq!(w.rows(), 2500);
            let meta = HashMap::from([("ctscope".to_string(), "{\"entries\": 2500}".to_string())]);
            let (got, r) = read_back(w.finish(&meta).unwrap());
            let md = r.metadata();
            assert_eq!(md.num_row_groups(), 3, "threads {threads}");
            assert_eq!(md.row_group(2).num_rows(), 500);
            let kv = md.file_metadata().key_value_metadata().unwrap();
            assert!(kv.iter().any(|k| k.key == "ctscope" && k.value.as_deref() == Some("{\"entries\": 2500}")));
            assert!(r.schema().fields().iter().all(|f| f.is_nullable()));
            // no min/max; zstd but for the columns it cannot shrink
            let col = |c: usize| md.row_group(0).column(c).clone();
            assert!((0..4).all(|c| col(c).statistics().is_none_or(|s| s.min_bytes_opt().is_none())), "threads {threads}");
            assert_eq!(col(0).compression(), Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).unwrap()));
            assert_eq!((col(0).column_path().string(), col(3).column_path().string()), ("dport".into(), "a2b_seqno".into()));
            assert_eq!(col(3).compression(), Compression::UNCOMPRESSED);
            let got = arrow_select::concat::concat_batches(&got[0].schema(), &got).unwrap();
            assert_eq!(got.num_rows(), 2500);
            for c in 0..want.num_columns() {
                assert_eq!(got.column(c).to_data(), want.column(c).to_data(), "threads {threads}, column {c}");
            }
        }
    }

    #[test]
    fn a_file_of_no_rows_has_the_columns_and_metadata() {
        let b = batch(0, 0);
        let w = ParquetFileWriter::try_new(Vec::new(), &b.schema()).unwrap();
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        let (got, r) = read_back(w.finish(&meta).unwrap());
        assert!(got.iter().all(|b| b.num_rows() == 0));
        assert_eq!(r.metadata().num_row_groups(), 0);
        assert_eq!(r.schema().fields().len(), 4);
    }

    #[test]
    fn refuses_a_batch_of_other_columns_and_writes_nothing_of_it() {
        let b = batch(0, 3);
        let mut w = ParquetFileWriter::try_new(Vec::new(), &b.schema()).unwrap();
        let other = b.project(&[1, 0, 2, 3]).unwrap();
        assert!(w.write(&other).is_err());
        let typed = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("dport", DataType::UInt64, false),
                Field::new("dst", DataType::Utf8View, false),
                Field::new("flag_names", b.schema().field(2).data_type().clone(), false),
                Field::new("last_seen_ns", DataType::UInt64, false),
            ])),
            vec![b.column(3).clone(), b.column(1).clone(), b.column(2).clone(), b.column(3).clone()],
        )
        .unwrap();
        assert!(w.write(&typed).is_err());
        assert_eq!(w.rows(), 0);
    }

    #[test]
    fn dropping_an_unfinished_writer_ends_its_threads() {
        let b = batch(0, 100);
        let mut w = ParquetFileWriter::with_options(Vec::new(), &b.schema(), 3, 1000).unwrap();
        w.write(&b).unwrap();
        let names = |name: &str| {
            std::fs::read_dir("/proc/self/task").unwrap().filter(|t| {
                let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap_or_default();
                comm.trim() == name
            }).count()
        };
        // A thread names itself as it starts: wait for it.
        let t = std::time::Instant::now();
        while names("ctscope-pq2") == 0 && t.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(names("ctscope-pq2") >= 1);
        drop(w);
        // Other tests may run writers of their own at the same time; none of them has
        // three threads under these names for long, so wait for ours to be gone.
        let t = std::time::Instant::now();
        while names("ctscope-pq2") > 0 && t.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(names("ctscope-pq2"), 0);
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let e: ParquetError = std::io::Error::from_raw_os_error(libc::EPIPE).into();
        assert_eq!(io_error(e).unwrap().raw_os_error(), Some(libc::EPIPE));
        assert!(io_error(ParquetError::General("x".into())).is_err());
    }
}
