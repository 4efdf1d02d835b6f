//! A dump in flight: a reader thread issues the syscalls while the consumer decodes, so
//! the two overlap on separate cores. The consumer is either Python (`Dump.next_batch`,
//! GIL released) or any Arrow C stream reader (`__arrow_c_stream__`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, SchemaRef};

use crate::decode::{self, Columns, CtDecoder};
use crate::pushdown::Pred;
use crate::error::{CtError, Result};
use crate::iter::{Chunk, MapReader, Method, ReadStats};
use crate::layout::{self, Layout};
use crate::map::MapParams;
use crate::parallel::{self, RangeJob, Registry};
use crate::sys::{self, BatchStep};

/// What the reader thread reports once it stops.
#[derive(Clone, Debug)]
pub struct ReaderStatus {
    pub method: Method,
    pub stats: ReadStats,
    pub finished: bool,
}

#[derive(Clone)]
enum Decoder {
    /// With the pushed-down predicate, if any: rows it rejects are never decoded.
    Ct(CtDecoder, Option<Arc<Pred>>),
    Raw { ks: usize, vs: usize },
}

impl Decoder {
    /// The first `n` entries of `c` (a predicate's selection is Gather's: it hands over only
    /// the rows the predicate keeps).
    fn decode(&self, c: &Chunk, n: usize) -> Result<RecordBatch> {
        match self {
            Decoder::Ct(d, _) => d.decode(&c.keys, &c.values, n),
            Decoder::Raw { ks, vs } => decode::decode_raw(&c.keys, &c.values, n, *ks, *vs),
        }
        .map_err(|e| CtError::Os { op: "building Arrow batch".into(), err: std::io::Error::other(e.to_string()) })
    }
}

/// A reader's decoding. Without a predicate every chunk is a batch. With one, the rows it
/// keeps are gathered until they fill a batch of `rows`, the read ends, or `wait` (by
/// default `GATHER_WAIT`) has passed since the first of them was read: a 1 %-selective query over a million entries then
/// hands over a few batches, not one per syscall, each paying Python's and polars'
/// per-batch costs over every column; and a `head(n)` still gets its first rows within
/// GATHER_WAIT of their being read (it stops the read that much later at most).
struct Gather {
    decoder: Decoder,
    held: Chunk,
    rows: usize,
    wait: Duration,
    since: Option<Instant>,
}

pub const GATHER_WAIT: Duration = Duration::from_millis(50);

impl Gather {
    fn new(decoder: Decoder, rows: usize, wait: Duration) -> Self {
        Gather { decoder, held: Chunk::default(), rows, wait, since: None }
    }
}

impl parallel::RangeDecode for Gather {
    fn chunk(&mut self, c: &Chunk) -> Result<Option<RecordBatch>> {
        let Decoder::Ct(d, Some(p)) = &self.decoder else {
            return self.decoder.decode(c, c.count).map(Some);
        };
        let kept = p.select(d, c);
        let kept = kept.as_ref().unwrap_or(c);
        if self.held.count == 0 && kept.count >= self.rows / 2 {
            return self.decoder.decode(kept, kept.count).map(Some); // worth a batch of its own
        }
        self.held.keys.extend_from_slice(&kept.keys[..kept.count * d.key_size()]);
        self.held.values.extend_from_slice(&kept.values[..kept.count * d.value_size()]);
        self.held.count += kept.count;
        if self.held.count == 0 {
            return Ok(None); // the wait starts with the first row held, not with an empty read
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.held.count < self.rows && since.elapsed() < self.wait {
            return Ok(None);
        }
        self.finish()
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        if self.held.count == 0 {
            return Ok(None);
        }
        let held = std::mem::take(&mut self.held);
        self.since = None;
        self.decoder.decode(&held, held.count).map(Some)
    }
}

/// What the readers send: raw chunks (single reader; the consumer decodes) or batches
/// already decoded by a parallel range worker.
enum Payload {
    Raw(Chunk),
    Batch(RecordBatch),
}

pub struct DumpStream {
    rx: Receiver<Result<Payload>>,
    decoder: Decoder,
    /// The single reader's chunks, decoded here: a predicate's kept rows are gathered.
    gather: Gather,
    schema: SchemaRef,
    remaining: Option<u64>,
    pub layout: Layout,
    pub layout_reason: String,
    pub status: Arc<Mutex<ReaderStatus>>,
}

pub struct DumpOptions {
    pub layout: Option<Layout>,
    pub method: Method,
    pub batch: u32,
    pub now_ns: u64,
    pub limit: Option<u64>,
    /// Bucket-range workers for the batch method (1 = one reader thread + the consumer).
    pub threads: usize,
    /// Only these columns (CT layouts; None = all).
    pub columns: Option<Columns>,
    /// Rows this rejects are not decoded (CT layouts). `limit` counts the rows it keeps.
    pub predicate: Option<Arc<Pred>>,
    /// How long a predicate's kept rows may wait for more before they are handed over.
    pub gather_wait: Duration,
}

impl DumpStream {
    /// Start reading. The layout is settled before this returns: for a ct3 map under
    /// `auto` that means looking at the values the probe call returned (or, read key by
    /// key, at the first entries of a next-key walk).
    /// `batch_ok`: what an earlier dump of the same map learnt about its batch ops.
    pub fn start(fd: Arc<OwnedFd>, p: &MapParams, batch_ok: &OnceLock<bool>, path_name: &str, opt: DumpOptions) -> Result<Self> {
        p.require_hash(path_name)?;
        // One small batch call first: it tells whether the kernel has batch ops for this
        // map, and gives a ct3 map's values to decide its layout from. Not needed when the
        // layout is settled without values and an earlier dump already made that call
        // (scan_map's schema dump): it would run alone, before any reader starts.
        let wants_sample = opt.layout.is_none() && p.static_layout().is_none();
        let probe = match batch_ok.get() {
            _ if opt.method == Method::NextKey => None,
            Some(&ok) if !wants_sample => Some(ok.then(Vec::new)),
            _ => {
                let r = probe(&fd, p)?;
                let _ = batch_ok.set(r.is_some());
                Some(r)
            }
        };
        let batch_ok = probe.as_ref().is_some_and(|p| p.is_some());
        if opt.method == Method::Batch && !batch_ok {
            return Err(CtError::NotCtMap(format!(
                "{path_name}: the kernel has no BPF_MAP_LOOKUP_BATCH for this map; use --method next_key or auto"
            )));
        }
        let sample = probe.flatten().unwrap_or_default();
        let (layout, reason) = match opt.layout {
            Some(l) => (l, format!("layout {} chosen explicitly", l.name())),
            None => match p.static_layout() {
                Some(l) => (l, format!("{}: ct{} map", l.name(), p.version.unwrap_or(0))),
                None if p.version == Some(3) => {
                    if batch_ok {
                        layout::guess_v3_meaning(&sample, p.value_size as usize)
                    } else {
                        // No batch ops (or --method next_key): sample the first entries of
                        // the key-by-key walk and judge them by the same rule.
                        layout::guess_v3_meaning(&sample_next_key(&fd, p)?, p.value_size as usize)
                    }
                }
                None => {
                    return Err(CtError::NotCtMap(format!(
                        "{path_name}: key/value sizes {}/{} fit no Calico CT layout (expected 16/64, 16/88 or 40/128); use --layout raw",
                        p.key_size, p.value_size
                    )));
                }
            },
        };
        let decoder = if layout == Layout::Raw {
            Decoder::Raw { ks: p.key_size as usize, vs: p.value_size as usize }
        } else {
            let fam = layout::check_fits(layout, p.family, p.key_size, p.value_size)
                .map_err(|e| CtError::NotCtMap(format!("{path_name}: {e}")))?;
            let d = CtDecoder::new(layout, fam, opt.now_ns).expect("checked by check_fits");
            Decoder::Ct(opt.columns.map_or(d.clone(), |c| d.with_columns(c)), opt.predicate.clone())
        };
        let schema = match &decoder {
            Decoder::Raw { .. } => decode::raw_schema(),
            Decoder::Ct(d, _) => d.schema(),
        };
        let method = if batch_ok { Method::Batch } else { Method::NextKey };
        let status = Arc::new(Mutex::new(ReaderStatus { method, stats: ReadStats::default(), finished: false }));
        let rx = if opt.limit == Some(0) {
            // Nothing will be handed out (a schema-only dump, as scan_map's): start no
            // reader. Readers started here would read and decode whole batches nobody
            // takes, on the cores the caller's next (real) dump is about to use.
            sync_channel::<Result<Payload>>(1).1
        } else if batch_ok && opt.threads > 1 {
            spawn_ranges(fd, p, &opt, decoder.clone(), status.clone())?
        } else {
            let m = if batch_ok { Method::Batch } else { Method::NextKey };
            spawn_reader(MapReader::new(fd, p.key_size, p.value_size, p.max_entries, m, opt.batch), status.clone())?
        };
        let gather = Gather::new(decoder.clone(), opt.batch.max(1) as usize, opt.gather_wait);
        Ok(DumpStream { rx, decoder, gather, schema, remaining: opt.limit, layout, layout_reason: reason, status })
    }

    /// The next decoded batch, or None when the map has been read to its end.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let batch = loop {
            let Ok(msg) = self.rx.recv() else {
                // every reader finished and hung up: the rows the predicate kept last, if any
                match parallel::RangeDecode::finish(&mut self.gather)? {
                    Some(b) => break b,
                    None => return Ok(None),
                }
            };
            match msg? {
                Payload::Raw(chunk) if matches!(self.decoder, Decoder::Ct(_, Some(_))) => {
                    if let Some(b) = parallel::RangeDecode::chunk(&mut self.gather, &chunk)? {
                        break b;
                    }
                }
                Payload::Raw(chunk) => {
                    let n = self.take_rows(chunk.count);
                    return self.decoder.decode(&chunk, n).map(Some);
                }
                Payload::Batch(b) => break b,
            }
        };
        let n = self.take_rows(batch.num_rows());
        Ok(Some(if n < batch.num_rows() { batch.slice(0, n) } else { batch }))
    }

    /// Count `n` rows against --limit; how many of them to keep.
    fn take_rows(&mut self, n: usize) -> usize {
        match &mut self.remaining {
            Some(r) => {
                let k = n.min(*r as usize);
                *r -= k as u64;
                k
            }
            None => n,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl Iterator for DumpStream {
    type Item = std::result::Result<RecordBatch, ArrowError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().map_err(|e| ArrowError::ExternalError(Box::new(e))).transpose()
    }
}

impl RecordBatchReader for DumpStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// First batch call: Some(values) when batch ops work, None when the kernel lacks them.
fn probe(fd: &Arc<OwnedFd>, p: &MapParams) -> Result<Option<Vec<u8>>> {
    let (ks, vs) = (p.key_size as usize, p.value_size as usize);
    let mut count = 1024u32;
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    loop {
        let mut out = vec![0u8; ks.max(4)];
        match sys::lookup_batch_into(fd.as_fd(), None, &mut out, &mut keys, &mut values, count, ks, vs) {
            Ok(BatchStep::More(_)) | Ok(BatchStep::Done(_)) => return Ok(Some(values)),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => count *= 2,
            Err(e) if matches!(e.raw_os_error(), Some(sys::ENOTSUPP) | Some(libc::EINVAL)) => return Ok(None),
            Err(e) => return Err(CtError::os("BPF_MAP_LOOKUP_BATCH", e)),
        }
    }
}

/// Values of the first entries (up to `SAMPLE` of them) of a GET_NEXT_KEY + LOOKUP_ELEM
/// walk: what a ct3 map's layout is decided from when batch lookups are not used. The
/// walk is the dump's own (bounded, restart-safe); the dump itself starts afresh.
fn sample_next_key(fd: &Arc<OwnedFd>, p: &MapParams) -> Result<Vec<u8>> {
    const SAMPLE: u32 = 1024;
    let mut r = MapReader::new(fd.clone(), p.key_size, p.value_size, p.max_entries, Method::NextKey, SAMPLE);
    Ok(r.next_chunk()?.map(|c| c.values).unwrap_or_default())
}

/// One reader thread; the consumer decodes (so syscalls and decoding overlap).
fn spawn_reader(mut reader: MapReader, st: Arc<Mutex<ReaderStatus>>) -> Result<Receiver<Result<Payload>>> {
    let (tx, rx) = sync_channel::<Result<Payload>>(2);
    std::thread::Builder::new()
        .name("ctscope-reader".into())
        .spawn(move || {
            // A panic here would otherwise hang up the channel, which reads as the map's end.
            let res = crate::error::guard("map reader", || {
                loop {
                    let next = reader.next_chunk();
                    {
                        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                        s.method = reader.method();
                        s.stats = reader.stats;
                        s.finished = matches!(next, Ok(None));
                    }
                    let (msg, end) = match next {
                        Ok(Some(c)) => (Ok(Payload::Raw(c)), false),
                        Ok(None) => break,
                        Err(e) => (Err(e), true),
                    };
                    // A closed receiver means the consumer stopped early: stop reading too.
                    if tx.send(msg).is_err() || end {
                        break;
                    }
                }
                Ok(())
            });
            if let Err(e) = res {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| CtError::os("spawning reader thread", e))?;
    Ok(rx)
}

/// Bucket-range workers, each reading and decoding its own range (see parallel.rs).
fn spawn_ranges(
    fd: Arc<OwnedFd>,
    p: &MapParams,
    opt: &DumpOptions,
    decoder: Decoder,
    st: Arc<Mutex<ReaderStatus>>,
) -> Result<Receiver<Result<Payload>>> {
    let ranges = parallel::split(parallel::n_buckets(p.max_entries), opt.threads);
    let registry = Registry::new(&ranges);
    let (tx, rx) = sync_channel::<Result<Payload>>(2 * ranges.len());
    let left = Arc::new(Mutex::new(ranges.len()));
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let job = RangeJob {
            fd: fd.clone(),
            key_size: p.key_size as usize,
            value_size: p.value_size as usize,
            index: i,
            start,
            end,
            last: i + 1 == ranges.len(),
            cap: opt.batch.max(1),
            registry: registry.clone(),
        };
        let (dec, st, left, cap, wait) = (decoder.clone(), st.clone(), left.clone(), opt.batch.max(1) as usize, opt.gather_wait);
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("ctscope-range{i}"))
            .spawn(move || {
                let res = crate::error::guard("range reader", || {
                    Ok(parallel::run_range(
                        job,
                        Gather::new(dec, cap, wait),
                        |b: Result<RecordBatch>| tx.send(b.map(Payload::Batch)).is_ok(),
                    ))
                });
                let stats = match res {
                    Ok(stats) => stats,
                    Err(e) => {
                        let _ = tx.send(Err(e)); // not a silent end of the map
                        return;
                    }
                };
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                s.stats.syscalls += stats.syscalls;
                s.stats.entries += stats.entries;
                s.stats.enospc_retries += stats.enospc_retries;
                let mut l = left.lock().unwrap_or_else(|e| e.into_inner());
                *l -= 1;
                s.finished = *l == 0;
            })
            .map_err(|e| CtError::os("spawning range worker", e))?;
    }
    Ok(rx)
}
