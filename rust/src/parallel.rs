//! Parallel scan: `BPF_MAP_LOOKUP_BATCH`'s cursor is a bucket index, so disjoint bucket
//! ranges can be read by several threads at once, each decoding its own batches.
//!
//! The boundary problem: a call copies whole buckets and only stops at a non-empty
//! bucket that does not fit, so the last call of a range can run past the range's end
//! (`out > end`) and copy rows the next range also reads. The kernel does not say which
//! bucket a row came from, but a key always hashes to the same bucket. So a key found
//! both in range i's overshooting call and in range i+1's rows read before that
//! overshoot's end is in range i+1's territory: drop it from range i. Keys only range i
//! saw (deleted before i+1 got there) stay once. This is exact under churn too: no key
//! is reported twice, and a key present for the whole dump is reported once.
//!
//! Near its end a range sizes its calls from the density seen so far, so the overshoot
//! (which is read twice) stays a handful of rows.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use arrow_array::RecordBatch;

use crate::error::{CtError, Result};
use crate::iter::{Chunk, ReadStats};
use crate::sys::{self, BatchStep};

/// Buckets of a kernel hash table: `roundup_pow_of_two(max_entries)` (kernel/bpf/hashtab.c).
/// If a kernel ever differs, ranges stay correct: the last range reads to the real end.
pub fn n_buckets(max_entries: u32) -> u32 {
    max_entries.max(1).checked_next_power_of_two().unwrap_or(1 << 31)
}

/// Workers for a scan when the caller does not say: one per core, but a single reader for
/// small tables, where a range split costs more (threads, boundary reads) than it saves.
pub fn auto_threads(max_entries: u32) -> usize {
    const MIN_BUCKETS_PER_WORKER: u32 = 1 << 16;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min((n_buckets(max_entries) / MIN_BUCKETS_PER_WORKER).max(1) as usize)
}

/// Split `[0, n)` into `parts` contiguous ranges.
pub fn split(n: u32, parts: usize) -> Vec<(u32, u32)> {
    let parts = parts.max(1) as u64;
    (0..parts).map(|i| ((n as u64 * i / parts) as u32, (n as u64 * (i + 1) / parts) as u32)).collect()
}

/// What one range has read, as far as earlier ranges may need it.
#[derive(Default)]
struct RangeState {
    start: u32,
    /// (start cursor, packed keys) of calls an earlier range's overshoot may cover.
    calls: Vec<(u32, Vec<u8>)>,
    /// Start cursor of the latest call.
    last_in: Option<u32>,
    /// No more reads will happen in this range.
    finished: bool,
    /// End cursor of this range's overshooting last call, if it overshot.
    limit: Option<u32>,
}

/// Shared by all ranges of one scan.
pub struct Registry {
    ranges: Mutex<Vec<RangeState>>,
    cv: Condvar,
}

impl Registry {
    pub fn new(ranges: &[(u32, u32)]) -> Arc<Self> {
        let states = ranges.iter().map(|&(s, _)| RangeState { start: s, ..Default::default() }).collect();
        Arc::new(Registry { ranges: Mutex::new(states), cv: Condvar::new() })
    }

    /// Range `j` made a call at `start` that returned `keys`.
    fn record(&self, j: usize, start: u32, keys: &[u8]) {
        let mut r = self.ranges.lock().unwrap();
        // Keep the keys while an earlier range may still overshoot past `start`.
        let needed = r[..j].iter().any(|e| !e.finished || e.limit.is_some_and(|l| l > start));
        if needed && !keys.is_empty() {
            r[j].calls.push((start, keys.to_vec()));
        }
        r[j].last_in = Some(r[j].last_in.map_or(start, |c| c.max(start)));
        self.cv.notify_all();
    }

    fn finish(&self, j: usize, limit: Option<u32>) {
        let mut r = self.ranges.lock().unwrap();
        r[j].finished = true;
        r[j].limit = limit;
        self.cv.notify_all();
    }

    /// Range `i` overshot to `limit`: wait until every later range starting below it has
    /// read past it (or finished), then return the keys they read below it.
    fn keys_below(&self, i: usize, limit: u32) -> Vec<u8> {
        let mut r = self.ranges.lock().unwrap();
        loop {
            let ready = r[i + 1..]
                .iter()
                .filter(|e| e.start < limit)
                .all(|e| e.finished || e.last_in.is_some_and(|c| c >= limit));
            if ready {
                break;
            }
            r = self.cv.wait(r).unwrap();
        }
        let mut out = Vec::new();
        for e in r[i + 1..].iter().filter(|e| e.start < limit) {
            for (start, keys) in &e.calls {
                if *start < limit {
                    out.extend_from_slice(keys);
                }
            }
        }
        out
    }
}

/// One worker's job.
pub struct RangeJob {
    pub fd: Arc<OwnedFd>,
    pub key_size: usize,
    pub value_size: usize,
    pub index: usize,
    pub start: u32,
    pub end: u32,
    /// The last range reads to the end of the map, whatever `end` says.
    pub last: bool,
    pub cap: u32,
    pub registry: Arc<Registry>,
}

/// What a range worker does with the chunks it reads: a batch now, or later (rows a
/// pushed-down predicate keeps are gathered into batches of a useful size first).
pub trait RangeDecode {
    fn chunk(&mut self, c: &Chunk) -> Result<Option<RecordBatch>>;
    /// The rows still held once the range is read.
    fn finish(&mut self) -> Result<Option<RecordBatch>>;
}

/// Read one bucket range, decoding with `dec` and handing batches to `send`, which
/// returns false once the consumer has gone away.
pub fn run_range<D, S>(job: RangeJob, mut dec: D, send: S) -> ReadStats
where
    D: RangeDecode,
    S: Fn(Result<RecordBatch>) -> bool,
{
    let mut stats = ReadStats::default();
    let hand_over = |b: Option<RecordBatch>| match b.map(|b| send(Ok(b))) {
        Some(false) => Err(CtError::BadArgument("consumer went away".into())),
        _ => Ok(()),
    };
    let mut res = scan_range(&job, &mut stats, &mut |chunk: &Chunk| hand_over(dec.chunk(chunk)?));
    if res.is_ok() {
        res = dec.finish().and_then(hand_over);
    }
    if let Err(e) = res {
        // Never leave an earlier range waiting on us.
        job.registry.finish(job.index, None);
        send(Err(e));
    }
    stats
}

fn scan_range(job: &RangeJob, stats: &mut ReadStats, emit: &mut dyn FnMut(&Chunk) -> Result<()>) -> Result<()> {
    let (ks, vs) = (job.key_size, job.value_size);
    // Reused across calls: each chunk is decoded before the next call, so the buffers'
    // pages stay mapped and nothing is zeroed again.
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let cursor_len = ks.max(4);
    let mut cursor = job.start;
    let mut rows_seen = 0u64;
    let mut count_override: Option<u32> = None;
    loop {
        if !job.last && cursor >= job.end {
            job.registry.finish(job.index, None);
            return Ok(());
        }
        // Size the call: full batches far from the end, the expected remainder near it.
        let count = count_override.unwrap_or_else(|| {
            if job.last || rows_seen == 0 {
                job.cap
            } else {
                let density = rows_seen as f64 / (cursor - job.start).max(1) as f64;
                let remaining = density * (job.end - cursor) as f64;
                ((remaining * 1.1) as u32 + 16).clamp(1, job.cap)
            }
        });
        let mut inb = vec![0u8; cursor_len];
        inb[..4].copy_from_slice(&cursor.to_ne_bytes());
        let mut out = vec![0u8; cursor_len];
        stats.syscalls += 1;
        let step = sys::lookup_batch_into(job.fd.as_fd(), Some(&inb), &mut out, &mut keys, &mut values, count, ks, vs);
        let out_cursor = u32::from_ne_bytes(out[..4].try_into().unwrap());
        let (got, done) = match step {
            Ok(BatchStep::More(g)) => (g as usize, false),
            Ok(BatchStep::Done(g)) => (g as usize, true),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                // The next non-empty bucket (at `out`) holds more than `count` entries.
                if !job.last && out_cursor >= job.end {
                    job.registry.record(job.index, cursor, &[]);
                    job.registry.finish(job.index, None);
                    return Ok(()); // and it is a later range's
                }
                stats.enospc_retries += 1;
                count_override = Some(count.saturating_mul(2));
                continue;
            }
            Err(e) => return Err(CtError::os("BPF_MAP_LOOKUP_BATCH", e)),
        };
        count_override = None;
        job.registry.record(job.index, cursor, &keys);
        rows_seen += got as u64;
        let overshoot = !job.last && out_cursor > job.end;
        let mut chunk = Chunk { keys: std::mem::take(&mut keys), values: std::mem::take(&mut values), count: got };
        if overshoot || done {
            job.registry.finish(job.index, overshoot.then_some(out_cursor));
        }
        if overshoot {
            // This call read buckets past our end: drop keys later ranges read there.
            let theirs = job.registry.keys_below(job.index, out_cursor);
            chunk = drop_keys(chunk, &theirs, ks, vs);
        }
        stats.entries += chunk.count as u64;
        if chunk.count > 0 {
            emit(&chunk)?;
        }
        if done || overshoot {
            return Ok(());
        }
        (keys, values) = (chunk.keys, chunk.values);
        cursor = out_cursor;
    }
}

/// Remove from `chunk` the entries whose key is in `theirs` (packed keys), in place: the
/// kept entries move down within the chunk's own buffers (a fresh pair of batch-sized
/// buffers would be ~1.7 MB of newly faulted pages for a handful of dropped rows).
fn drop_keys(mut chunk: Chunk, theirs: &[u8], ks: usize, vs: usize) -> Chunk {
    if theirs.is_empty() || chunk.count == 0 {
        return chunk;
    }
    let set: HashSet<&[u8]> = theirs.chunks_exact(ks).collect();
    let mut kept = 0;
    for i in 0..chunk.count {
        if set.contains(&chunk.keys[i * ks..(i + 1) * ks]) {
            continue;
        }
        if kept != i {
            chunk.keys.copy_within(i * ks..(i + 1) * ks, kept * ks);
            chunk.values.copy_within(i * vs..(i + 1) * vs, kept * vs);
        }
        kept += 1;
    }
    chunk.keys.truncate(kept * ks);
    chunk.values.truncate(kept * vs);
    chunk.count = kept;
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_to_powers_of_two() {
        assert_eq!(n_buckets(512_000), 524_288);
        assert_eq!(n_buckets(1 << 20), 1 << 20);
        assert_eq!(n_buckets(1), 1);
    }

    #[test]
    fn split_covers_everything_once() {
        for parts in 1..9 {
            let r = split(1000, parts);
            assert_eq!(r.first().unwrap().0, 0);
            assert_eq!(r.last().unwrap().1, 1000);
            for w in r.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
        }
    }

    #[test]
    fn drops_only_shared_keys() {
        let c = Chunk { keys: vec![1, 1, 2, 2, 3, 3], values: vec![10, 20, 30], count: 3 };
        let out = drop_keys(c, &[2, 2, 9, 9], 2, 1);
        assert_eq!(out.count, 2);
        assert_eq!(out.keys, vec![1, 1, 3, 3]);
        assert_eq!(out.values, vec![10, 30]);
        // first, neighbours and last dropped: the kept rows move down in order
        let c = Chunk { keys: (1..=6).flat_map(|k| [k, 0]).collect(), values: (1..=6).map(|v| v * 10).collect(), count: 6 };
        let out = drop_keys(c, &[1, 0, 3, 0, 4, 0, 6, 0], 2, 1);
        assert_eq!((out.count, out.keys, out.values), (2, vec![2, 0, 5, 0], vec![20, 50]));
        let c = Chunk { keys: vec![7, 7], values: vec![70], count: 1 };
        let out = drop_keys(c, &[7, 7], 2, 1);
        assert_eq!((out.count, out.keys.len(), out.values.len()), (0, 0, 0));
    }
}
