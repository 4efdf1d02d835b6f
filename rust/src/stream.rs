//! A dump in flight: a reader thread issues the syscalls while the consumer decodes, so
//! the two overlap on separate cores. The consumer is either Python (`Dump.next_batch`,
//! GIL released) or any Arrow C stream reader (`__arrow_c_stream__`).

use std::os::fd::OwnedFd;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, SchemaRef};

use crate::decode::{self, CtDecoder};
use crate::error::{CtError, Result};
use crate::iter::{Chunk, MapReader, Method, ReadStats};
use crate::layout::{self, Layout};
use crate::map::MapParams;

/// What the reader thread reports once it stops.
#[derive(Clone, Debug)]
pub struct ReaderStatus {
    pub method: Method,
    pub stats: ReadStats,
    pub finished: bool,
}

enum Decoder {
    Ct(CtDecoder),
    Raw { ks: usize, vs: usize },
}

pub struct DumpStream {
    rx: Receiver<Result<Chunk>>,
    first: Option<Result<Chunk>>,
    decoder: Decoder,
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
}

impl DumpStream {
    /// Start reading. The layout is settled before this returns: for a ct3 map under
    /// `auto` that means waiting for the first chunk and looking at its values.
    pub fn start(fd: Arc<OwnedFd>, p: &MapParams, path_name: &str, opt: DumpOptions) -> Result<Self> {
        if !p.is_hash() {
            return Err(CtError::NotCtMap(format!(
                "{path_name}: is a {} map, expected hash or lru_hash",
                layout::map_type_name(p.map_type)
            )));
        }
        let mut reader = MapReader::new(fd, p.key_size, p.value_size, p.max_entries, opt.method, opt.batch);
        let status =
            Arc::new(Mutex::new(ReaderStatus { method: reader.method(), stats: ReadStats::default(), finished: false }));
        let (tx, rx) = sync_channel::<Result<Chunk>>(2);
        let st = status.clone();
        std::thread::Builder::new()
            .name("ctscope-reader".into())
            .spawn(move || {
                loop {
                    let next = reader.next_chunk();
                    let end = !matches!(next, Ok(Some(_)));
                    {
                        let mut s = st.lock().unwrap();
                        s.method = reader.method();
                        s.stats = reader.stats;
                        s.finished = matches!(next, Ok(None));
                    }
                    let msg = match next {
                        Ok(Some(c)) => Ok(c),
                        Ok(None) => break,
                        Err(e) => Err(e),
                    };
                    // A closed receiver means the consumer stopped early: stop reading too.
                    if tx.send(msg).is_err() || end {
                        break;
                    }
                }
            })
            .map_err(|e| CtError::os("spawning reader thread", e))?;

        let mut first = None;
        let (layout, reason) = match opt.layout {
            Some(l) => (l, format!("layout {} chosen explicitly", l.name())),
            None => match p.static_layout() {
                Some(l) => (l, format!("{}: ct{} map", l.name(), p.version.unwrap_or(0))),
                None if p.version == Some(3) => {
                    let c = rx.recv().unwrap_or(Ok(Chunk { keys: vec![], values: vec![], count: 0 }));
                    let guess = match &c {
                        Ok(c) => layout::guess_v3_meaning(&c.values, p.value_size as usize),
                        Err(_) => (Layout::V3, String::new()),
                    };
                    first = Some(c);
                    guess
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
            Decoder::Ct(CtDecoder::new(layout, fam, opt.now_ns).expect("checked by check_fits"))
        };
        let schema = match layout {
            Layout::Raw => decode::raw_schema(),
            _ => decode::ct_schema(),
        };
        Ok(DumpStream { rx, first, decoder, schema, remaining: opt.limit, layout, layout_reason: reason, status })
    }

    /// The next decoded batch, or None when the map has been read to its end.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let msg = match self.first.take() {
            Some(m) => m,
            None => match self.rx.recv() {
                Ok(m) => m,
                Err(_) => return Ok(None), // reader finished and hung up
            },
        };
        let chunk = msg?;
        let mut n = chunk.count;
        if let Some(r) = &mut self.remaining {
            n = n.min(*r as usize);
            *r -= n as u64;
        }
        let batch = match &self.decoder {
            Decoder::Ct(d) => d.decode(&chunk.keys, &chunk.values, n),
            Decoder::Raw { ks, vs } => decode::decode_raw(&chunk.keys, &chunk.values, n, *ks, *vs),
        }
        .map_err(|e| CtError::Os { op: "building Arrow batch".into(), err: std::io::Error::other(e.to_string()) })?;
        Ok(Some(batch))
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
