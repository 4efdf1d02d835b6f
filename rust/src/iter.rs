//! Reading every entry of a hash map: `BPF_MAP_LOOKUP_BATCH` where the kernel has it,
//! a bounded `GET_NEXT_KEY` + `LOOKUP_ELEM` walk where it does not (facts §8).
//!
//! The reader hands out `Chunk`s of raw key/value bytes; decoding happens elsewhere so
//! that the two can run on different cores.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::error::{CtError, Result};
use crate::sys::{self, BatchStep};

/// Entries per batch call and per chunk unless the caller asks otherwise.
pub const DEFAULT_BATCH: u32 = 16384;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Auto,
    Batch,
    NextKey,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Method::Auto),
            "batch" => Ok(Method::Batch),
            "next_key" | "next-key" => Ok(Method::NextKey),
            o => Err(CtError::BadArgument(format!("unknown method {o:?}: expected auto, batch or next_key"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Auto => "auto",
            Method::Batch => "batch",
            Method::NextKey => "next_key",
        }
    }
}

/// Raw entries, `count` keys of `key_size` bytes and `count` values of `value_size` bytes.
#[derive(Default)]
pub struct Chunk {
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
    pub count: usize,
}

/// Counters the dump reports when it is done.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadStats {
    pub syscalls: u64,
    pub enospc_retries: u64,
    pub entries: u64,
    /// Keys the per-key walk saw twice after a restart and dropped.
    pub duplicates_dropped: u64,
    /// Times GET_NEXT_KEY restarted the per-key walk (its cursor key had been deleted).
    pub restarts: u64,
    /// Keys the per-key walk was handed that were deleted before their value was read.
    pub vanished: u64,
    /// Keys the per-key walk visited (new, duplicate or vanished).
    pub visits: u64,
}

/// The per-key walk gives up after visiting this many times max_entries keys. Calico's
/// own iterator allows 10 x (felix/bpf/maps/syscall.go): its sweep only has to visit every
/// entry, whereas a dump claims to show the map. A walk that has visited three times what
/// the map can hold is reporting mostly keys inserted (and often gone again) while it ran.
pub const WALK_BOUND: u64 = 3;

enum State {
    Batch { cursor: Option<Vec<u8>>, count: u32 },
    NextKey {
        last: Option<Vec<u8>>,
        seen: HashSet<Box<[u8]>>,
        /// The last keys of the walk, newest last: where to resume after a restart.
        trail: VecDeque<Box<[u8]>>,
        visits: u64,
        limit: u64,
        /// The previous visit was a duplicate (one restart yields a run of them).
        in_restart: bool,
        started: std::time::Instant,
    },
    Done,
}

pub struct MapReader {
    fd: Arc<OwnedFd>,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    chunk: u32,
    requested: Method,
    used: Method,
    state: State,
    pub stats: ReadStats,
}

impl MapReader {
    /// All sizes come from the live map's info, never from a default.
    pub fn new(fd: Arc<OwnedFd>, key_size: u32, value_size: u32, max_entries: u32, method: Method, batch: u32) -> Self {
        let chunk = batch.max(1);
        let used = if method == Method::NextKey { Method::NextKey } else { Method::Batch };
        let mut r = MapReader {
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
            max_entries,
            chunk,
            requested: method,
            used,
            state: State::Done,
            stats: ReadStats::default(),
        };
        r.state = if used == Method::NextKey { r.next_key_state() } else { State::Batch { cursor: None, count: chunk } };
        r
    }

    /// The method actually in use (after any fallback).
    pub fn method(&self) -> Method {
        self.used
    }

    fn next_key_state(&self) -> State {
        // A walk that restarts (or keeps meeting new keys) under churn may never end otherwise.
        let limit = (self.max_entries as u64).saturating_mul(WALK_BOUND).saturating_add(1000);
        State::NextKey {
            last: None,
            seen: HashSet::new(),
            trail: VecDeque::new(),
            visits: 0,
            limit,
            in_restart: false,
            started: std::time::Instant::now(),
        }
    }

    /// The next chunk of entries, or None at the end of the map.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::Batch { .. } => match self.batch_chunk() {
                    Err(CtError::Os { err, .. })
                        if self.requested == Method::Auto
                            && self.stats.entries == 0
                            && matches!(err.raw_os_error(), Some(sys::ENOTSUPP) | Some(libc::EINVAL)) =>
                    {
                        // Kernel without batch ops for this map: walk key by key instead.
                        self.used = Method::NextKey;
                        self.state = self.next_key_state();
                    }
                    other => return other,
                },
                State::NextKey { .. } => return self.next_key_chunk(),
            }
        }
    }

    fn batch_chunk(&mut self) -> Result<Option<Chunk>> {
        let (chunk, done) = self.batch_call()?;
        if done {
            self.state = State::Done;
        }
        Ok(chunk)
    }

    /// Batch calls until one returns entries or the map ends; (chunk, reached_end).
    fn batch_call(&mut self) -> Result<(Option<Chunk>, bool)> {
        let State::Batch { cursor, count } = &mut self.state else { unreachable!() };
        // The cursor is a bucket index, but the kernel copies key_size bytes of it.
        let cursor_len = self.key_size.max(4);
        loop {
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            let mut out = vec![0u8; cursor_len];
            self.stats.syscalls += 1;
            let step = sys::lookup_batch_into(
                self.fd.as_fd(),
                cursor.as_deref(),
                &mut out,
                &mut keys,
                &mut values,
                *count,
                self.key_size,
                self.value_size,
            );
            let (got, done) = match step {
                Ok(BatchStep::More(g)) => (g as usize, false),
                // End of map: the final entries arrive together with ENOENT.
                Ok(BatchStep::Done(g)) => (g as usize, true),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    // One bucket holds more than `count` entries and nothing was copied:
                    // retry the same cursor with room for it.
                    self.stats.enospc_retries += 1;
                    *count = count.saturating_mul(2);
                    continue;
                }
                Err(e) => return Err(CtError::os("BPF_MAP_LOOKUP_BATCH", e)),
            };
            *cursor = Some(out);
            if got == 0 {
                if done {
                    return Ok((None, true));
                }
                continue;
            }
            self.stats.entries += got as u64;
            return Ok((Some(Chunk { keys, values, count: got }), done));
        }
    }

    fn next_key_chunk(&mut self) -> Result<Option<Chunk>> {
        let (ks, vs) = (self.key_size, self.value_size);
        let want = self.chunk as usize;
        let fd = self.fd.clone();
        let max_entries = self.max_entries;
        let State::NextKey { last, seen, trail, visits, limit, in_restart, started } = &mut self.state else {
            unreachable!()
        };
        let mut keys = Vec::with_capacity(want * ks);
        let mut values = Vec::with_capacity(want * vs);
        let mut next = vec![0u8; ks];
        let mut value = vec![0u8; vs];
        let mut count = 0;
        let mut finished = false;
        while count < want {
            self.stats.syscalls += 1;
            let more = sys::get_next_key(fd.as_fd(), last.as_deref(), &mut next)
                .map_err(|e| CtError::os("BPF_MAP_GET_NEXT_KEY", e))?;
            if !more {
                finished = true;
                break;
            }
            *visits += 1;
            self.stats.visits = *visits;
            if *visits > *limit {
                let s = &self.stats;
                return Err(CtError::IterationLimit(format!(
                    "key-by-key walk stopped after visiting {visits} keys ({WALK_BOUND} x max_entries {max_entries} + 1000) in {:.1} s without reaching the end: {} distinct keys read, {} restarts, {} vanished; the map changes faster than the walk can follow, so no dump of it would be a state of the map; retry when it is quieter, or use --method batch",
                    started.elapsed().as_secs_f64(),
                    s.entries + count as u64,
                    s.restarts,
                    s.vanished
                )));
            }
            let cur: Box<[u8]> = next.clone().into_boxed_slice();
            // GET_NEXT_KEY restarts from the first key when the current one was deleted:
            // keys seen before are duplicates. Rather than re-walk the whole map after
            // every restart (O(n) each, so heavy churn never finishes), resume right
            // after the newest key of the walk that still exists and whose successor
            // is new. Positions only ever move earlier (new elements go to a bucket's
            // head), so resuming there skips nothing that existed all along.
            if seen.contains(&cur) {
                self.stats.duplicates_dropped += 1;
                if !*in_restart {
                    self.stats.restarts += 1;
                    *in_restart = true;
                }
                *last = Some(next.clone());
                if let Some(resume) = resume_point(&fd, trail, seen, &mut next, &mut value, &mut self.stats)? {
                    *last = Some(resume);
                }
                continue;
            }
            *in_restart = false;
            *last = Some(next.clone());
            self.stats.syscalls += 1;
            let present =
                sys::lookup_elem(fd.as_fd(), &next, &mut value).map_err(|e| CtError::os("BPF_MAP_LOOKUP_ELEM", e))?;
            if !present {
                self.stats.vanished += 1;
                continue; // deleted between the two calls
            }
            if trail.len() == RESUME_TRAIL {
                trail.pop_front();
            }
            trail.push_back(cur.clone());
            seen.insert(cur);
            keys.extend_from_slice(&next);
            values.extend_from_slice(&value);
            count += 1;
        }
        if finished {
            self.state = State::Done;
        }
        self.stats.entries += count as u64;
        if count == 0 && finished {
            return Ok(None);
        }
        Ok(Some(Chunk { keys, values, count }))
    }
}

/// Keys of the walk remembered for resuming after a GET_NEXT_KEY restart.
const RESUME_TRAIL: usize = 64;

/// After a duplicate: the newest remembered key that still exists and whose successor
/// has not been seen, to continue the walk from (None: no such key, keep walking).
fn resume_point(
    fd: &Arc<OwnedFd>,
    trail: &mut VecDeque<Box<[u8]>>,
    seen: &HashSet<Box<[u8]>>,
    next: &mut [u8],
    value: &mut [u8],
    stats: &mut ReadStats,
) -> Result<Option<Vec<u8>>> {
    while let Some(t) = trail.back() {
        stats.syscalls += 1;
        let exists = sys::lookup_elem(fd.as_fd(), t, value).map_err(|e| CtError::os("BPF_MAP_LOOKUP_ELEM", e))?;
        if exists {
            stats.syscalls += 1;
            let more = sys::get_next_key(fd.as_fd(), Some(t), next).map_err(|e| CtError::os("BPF_MAP_GET_NEXT_KEY", e))?;
            // `t` exists, so its successor is its true successor in walk order (or the end).
            if !more || !seen.contains(&next[..]) {
                return Ok(Some(t.to_vec()));
            }
        }
        // Deleted, or everything after it was seen already: an older key may do better.
        trail.pop_back();
    }
    Ok(None)
}
