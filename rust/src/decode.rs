//! Raw CT entries → Arrow record batches. The column names are ctscope's public schema
//! (README "Schema"); every CT layout produces the same schema, with nulls where a layout
//! or entry type has no such field, so batches from any map concatenate.

use std::sync::Arc;

use arrow_array::builder::BinaryBuilder;
use arrow_array::types::{Float64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type};
use arrow_array::{
    ArrayRef, ArrowPrimitiveType, BooleanArray, ListArray, PrimitiveArray, RecordBatch, RecordBatchOptions, StringViewArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use crate::layout::{
    self, CT_TYPE_NAT_FWD, CT_TYPE_NAT_REV, CT_TYPE_NORMAL, FLAG_BA, FLAG_DSR_FWD, Family, KeyOffsets, LEG_ACK,
    LEG_APPROVED, LEG_FIN, LEG_OPENER, LEG_RST, LEG_SYN, LEG_WORKLOAD, Layout, ValueOffsets,
};

const PROTO_TCP: u32 = 6;

const LEG_FIELDS: &[(&str, DataType)] = &[
    ("bytes", DataType::UInt64),
    ("packets", DataType::UInt32),
    ("seqno", DataType::UInt32),
    ("syn", DataType::Boolean),
    ("ack", DataType::Boolean),
    ("fin", DataType::Boolean),
    ("rst", DataType::Boolean),
    ("approved", DataType::Boolean),
    ("opener", DataType::Boolean),
    ("workload", DataType::Boolean),
    ("ifindex", DataType::UInt32),
];

/// The schema of decoded CT entries (all layouts, both families).
pub fn ct_schema() -> SchemaRef {
    let s = || DataType::Utf8View;
    let mut f = vec![
        Field::new("proto", DataType::UInt8, false),
        Field::new("addr_a", s(), false),
        Field::new("port_a", DataType::UInt16, false),
        Field::new("addr_b", s(), false),
        Field::new("port_b", DataType::UInt16, false),
        Field::new("src", s(), false),
        Field::new("sport", DataType::UInt16, false),
        Field::new("dst", s(), false),
        Field::new("dport", DataType::UInt16, false),
        Field::new("type", s(), false),
        Field::new("flags", DataType::UInt32, false),
        Field::new("flag_names", DataType::List(Arc::new(Field::new("item", s(), true))), false),
        Field::new("last_seen_ns", DataType::UInt64, false),
        Field::new("rst_seen_ns", DataType::UInt64, true),
        Field::new("created_ns", DataType::UInt64, true),
        Field::new("idle_s", DataType::Float64, false),
        Field::new("tcp_state", s(), true),
    ];
    for leg in ["a2b", "b2a"] {
        for (name, dt) in LEG_FIELDS {
            f.push(Field::new(format!("{leg}_{name}"), dt.clone(), true));
        }
    }
    f.extend([
        Field::new("tun_ip", s(), true),
        Field::new("orig_ip", s(), true),
        Field::new("orig_port", DataType::UInt16, true),
        Field::new("orig_sport", DataType::UInt16, true),
        Field::new("orig_sip", s(), true),
        Field::new("rev_proto", DataType::UInt8, true),
        Field::new("rev_addr_a", s(), true),
        Field::new("rev_port_a", DataType::UInt16, true),
        Field::new("rev_addr_b", s(), true),
        Field::new("rev_port_b", DataType::UInt16, true),
        Field::new("nat_sport", DataType::UInt16, true),
    ]);
    Arc::new(Schema::new(f))
}

/// Internal join columns, decoded only on request and never part of the public schema:
/// the key's bytes as little-endian u64 words (`_kw0`…, 2 words for IPv4 keys, 5 for IPv6;
/// words past the key are 0) and the same for a NAT_FWD entry's rev key (`_rkw0`…, null on
/// other entries). Equal words ⟺ equal key bytes: an exact join key 5–8× smaller than the
/// address texts (Felix's NAT fwd → rev lookup is by these bytes too).
pub const KEY_WORDS: usize = 5;

fn ct_schema_with_hidden() -> Schema {
    let mut f: Vec<Field> = ct_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    for i in 0..KEY_WORDS {
        f.push(Field::new(format!("_kw{i}"), DataType::UInt64, false));
    }
    for i in 0..KEY_WORDS {
        f.push(Field::new(format!("_rkw{i}"), DataType::UInt64, true));
    }
    Schema::new(f)
}

/// The schema of `raw` dumps: undecoded bytes of any hash map.
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, false),
    ]))
}

/// A set of `ct_schema()` columns, by index (the schema has fewer than 64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns(u64);

impl Columns {
    pub fn all() -> Self {
        Columns((1u64 << ct_schema().fields().len()) - 1)
    }

    /// The named columns (public, or the internal `_kw*`/`_rkw*`); an unknown name is an
    /// error naming it.
    pub fn named<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let schema = ct_schema_with_hidden();
        let mut m = 0u64;
        for n in names {
            let i = schema.index_of(n.as_ref()).map_err(|_| format!("no column {:?} in the CT schema", n.as_ref()))?;
            m |= 1 << i;
        }
        Ok(Columns(m))
    }

    #[inline]
    fn has(self, name: usize) -> bool {
        self.0 & (1 << name) != 0
    }

    fn any(self, from: usize, to: usize) -> bool {
        (from..to).any(|i| self.has(i))
    }
}

// Column indices in `ct_schema()` (checked by a test).
const C_PROTO: usize = 0;
const C_ADDR_A: usize = 1;
const C_PORT_A: usize = 2;
const C_ADDR_B: usize = 3;
const C_PORT_B: usize = 4;
const C_SRC: usize = 5;
const C_SPORT: usize = 6;
const C_DST: usize = 7;
const C_DPORT: usize = 8;
const C_TYPE: usize = 9;
const C_FLAGS: usize = 10;
const C_FLAG_NAMES: usize = 11;
const C_LAST_SEEN: usize = 12;
const C_RST_SEEN: usize = 13;
const C_CREATED: usize = 14;
const C_IDLE: usize = 15;
const C_TCP_STATE: usize = 16;
const C_A2B: usize = 17; // 11 leg columns each (LEG_FIELDS)
const C_B2A: usize = 28;
const C_TUN_IP: usize = 39;
const C_ORIG_IP: usize = 40;
const C_ORIG_PORT: usize = 41;
const C_ORIG_SPORT: usize = 42;
const C_ORIG_SIP: usize = 43;
const C_REV_PROTO: usize = 44;
const C_REV_ADDR_A: usize = 45;
const C_REV_PORT_A: usize = 46;
const C_REV_ADDR_B: usize = 47;
const C_REV_PORT_B: usize = 48;
const C_NAT_SPORT: usize = 49;
const C_KW: usize = 50; // KEY_WORDS each
const C_RKW: usize = C_KW + KEY_WORDS;

/// Columns that are plain numbers read from fixed offsets, never null: a projection of only
/// these is decoded column by column (`CtDecoder::decode_narrow`).
const NARROW: Columns = Columns(
    1 << C_PROTO | 1 << C_PORT_A | 1 << C_PORT_B | 1 << C_SPORT | 1 << C_DPORT | 1 << C_FLAGS | 1 << C_LAST_SEEN | 1 << C_IDLE,
);

#[inline]
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
#[inline]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
#[inline]
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Canonical text of an address stored in network order, formatted into a reused buffer.
struct AddrFmt {
    buf: [u8; 48],
}

impl AddrFmt {
    fn new() -> Self {
        AddrFmt { buf: [0; 48] }
    }

    /// `o` as decimal at `self.buf[n..]`; the new end.
    #[inline]
    fn octets(&mut self, mut n: usize, b: &[u8]) -> usize {
        for (i, &o) in b.iter().enumerate() {
            if i > 0 {
                self.buf[n] = b'.';
                n += 1;
            }
            n += push_u8(&mut self.buf[n..], o);
        }
        n
    }

    /// `segs` as lowercase hex without leading zeros, colon-separated, at `self.buf[n..]`.
    #[inline]
    fn hextets(&mut self, mut n: usize, segs: &[u16]) -> usize {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, &v) in segs.iter().enumerate() {
            if i > 0 {
                self.buf[n] = b':';
                n += 1;
            }
            let digits = (16 - v.leading_zeros() as usize).div_ceil(4).max(1);
            for d in (0..digits).rev() {
                self.buf[n] = HEX[((v >> (4 * d)) & 0xf) as usize];
                n += 1;
            }
        }
        n
    }

    /// IPv6 text exactly as core's `Display for Ipv6Addr` writes it (RFC 5952: the first
    /// longest run of two or more zero hextets as `::`; IPv4-mapped as `::ffff:a.b.c.d`),
    /// without its formatter machinery, which cost most of a v6 map's decode.
    fn v6(&mut self, b: &[u8]) -> usize {
        let mut segs = [0u16; 8];
        for (i, s) in segs.iter_mut().enumerate() {
            *s = u16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
        }
        if segs[..6] == [0, 0, 0, 0, 0, 0xffff] {
            self.buf[..7].copy_from_slice(b"::ffff:");
            return self.octets(7, &b[12..16]);
        }
        let (mut best, mut best_len, mut cur, mut cur_len) = (0, 0, 0, 0);
        for (i, &s) in segs.iter().enumerate() {
            if s == 0 {
                if cur_len == 0 {
                    cur = i;
                }
                cur_len += 1;
                if cur_len > best_len {
                    (best, best_len) = (cur, cur_len);
                }
            } else {
                cur_len = 0;
            }
        }
        if best_len < 2 {
            return self.hextets(0, &segs);
        }
        let n = self.hextets(0, &segs[..best]);
        self.buf[n..n + 2].copy_from_slice(b"::");
        self.hextets(n + 2, &segs[best + best_len..])
    }

    #[inline]
    fn fmt(&mut self, b: &[u8]) -> &[u8] {
        // Unused NAT fields are all zeros on most entries: skip the formatting.
        if b.iter().all(|&x| x == 0) {
            return if b.len() == 4 { b"0.0.0.0" } else { b"::" };
        }
        // Hand-rolled: core's Display for Ipv4Addr/Ipv6Addr costs several times more.
        let n = if b.len() == 4 { self.octets(0, b) } else { self.v6(b) };
        &self.buf[..n]
    }
}

#[inline]
fn push_u8(out: &mut [u8], v: u8) -> usize {
    if v >= 100 {
        out[0] = b'0' + v / 100;
        out[1] = b'0' + (v / 10) % 10;
        out[2] = b'0' + v % 10;
        3
    } else if v >= 10 {
        out[0] = b'0' + v / 10;
        out[1] = b'0' + v % 10;
        2
    } else {
        out[0] = b'0' + v;
        1
    }
}

/// A Utf8View column built directly: strings of ≤ 12 bytes live in the 16-byte view
/// itself, longer ones in one data buffer. Far cheaper than the generic builder.
struct Views {
    views: Vec<u128>,
    data: Vec<u8>,
}

impl Views {
    fn new(n: usize) -> Self {
        Views { views: Vec::with_capacity(n), data: Vec::new() }
    }

    /// Callers only pass UTF-8 (ASCII addresses, fixed labels).
    #[inline]
    fn push(&mut self, s: &[u8]) {
        let len = s.len();
        let mut v = [0u8; 16];
        v[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        if len <= 12 {
            v[4..4 + len].copy_from_slice(s);
        } else {
            v[4..8].copy_from_slice(&s[0..4]);
            // bytes 8..12: buffer index 0
            v[12..16].copy_from_slice(&(self.data.len() as u32).to_le_bytes());
            self.data.extend_from_slice(s);
        }
        self.views.push(u128::from_le_bytes(v));
    }

    #[inline]
    fn push_null(&mut self) {
        self.views.push(0);
    }

    fn finish(self, nulls: Option<NullBuffer>) -> StringViewArray {
        let buffers = if self.data.is_empty() { vec![] } else { vec![Buffer::from_vec(self.data)] };
        // SAFETY: every view was written by `push` from valid UTF-8 with in-bounds
        // offsets into buffer 0; null slots are zero views.
        unsafe { StringViewArray::new_unchecked(ScalarBuffer::from(self.views), buffers.into(), nulls) }
    }
}

fn prim<T: ArrowPrimitiveType>(v: Vec<T::Native>, nulls: Option<NullBuffer>) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(v), nulls))
}

/// A validity mask, or None when every row is valid (Arrow's cheapest form).
fn mask(valid: &[bool]) -> Option<NullBuffer> {
    if valid.iter().all(|&v| v) {
        return None;
    }
    Some(NullBuffer::new(BooleanBuffer::collect_bool(valid.len(), |i| valid[i])))
}

fn all_null(n: usize) -> Option<NullBuffer> {
    Some(NullBuffer::new_null(n))
}

/// One leg's columns, kept as plain vectors until the batch is finished. Only the wanted
/// ones (`want`: bits in LEG_FIELDS order) are filled.
struct LegCols {
    want: u32,
    bytes: Vec<u64>,
    packets: Vec<u32>,
    seqno: Vec<u32>,
    bits: Vec<u32>,
    ifindex: Vec<u32>,
}

const LEG_BITS: [u32; 7] = [LEG_SYN, LEG_ACK, LEG_FIN, LEG_RST, LEG_APPROVED, LEG_OPENER, LEG_WORKLOAD];
// Positions in LEG_FIELDS.
const L_BYTES: u32 = 1 << 0;
const L_PACKETS: u32 = 1 << 1;
const L_SEQNO: u32 = 1 << 2;
const L_BITS: u32 = 0x7f << 3;
const L_IFINDEX: u32 = 1 << 10;

impl LegCols {
    /// The leg whose 11 columns start at schema index `first`.
    fn new(n: usize, cols: Columns, first: usize) -> Self {
        let want = (0..LEG_FIELDS.len()).filter(|&i| cols.has(first + i)).fold(0, |m, i| m | 1 << i);
        let cap = |bit: u32| if want & bit != 0 { n } else { 0 };
        LegCols {
            want,
            bytes: Vec::with_capacity(cap(L_BYTES)),
            packets: Vec::with_capacity(cap(L_PACKETS)),
            seqno: Vec::with_capacity(cap(L_SEQNO)),
            bits: Vec::with_capacity(cap(L_BITS)),
            ifindex: Vec::with_capacity(cap(L_IFINDEX)),
        }
    }

    fn any(&self) -> bool {
        self.want != 0
    }

    #[inline]
    fn push(&mut self, leg: &[u8], o: &layout::LegOffsets) {
        let w = self.want;
        if w & L_BYTES != 0 {
            self.bytes.push(o.bytes.map_or(0, |b| u64_at(leg, b)));
        }
        if w & L_PACKETS != 0 {
            self.packets.push(o.packets.map_or(0, |p| u32_at(leg, p)));
        }
        if w & L_SEQNO != 0 {
            // The raw TCP sequence number, stored in network order.
            self.seqno.push(u32::from_be_bytes(leg[o.seqno..o.seqno + 4].try_into().unwrap()));
        }
        if w & L_BITS != 0 {
            self.bits.push(u32_at(leg, o.bits));
        }
        if w & L_IFINDEX != 0 {
            self.ifindex.push(u32_at(leg, o.ifindex));
        }
    }

    #[inline]
    fn push_null(&mut self) {
        let w = self.want;
        if w & L_BYTES != 0 {
            self.bytes.push(0);
        }
        if w & L_PACKETS != 0 {
            self.packets.push(0);
        }
        if w & L_SEQNO != 0 {
            self.seqno.push(0);
        }
        if w & L_BITS != 0 {
            self.bits.push(0);
        }
        if w & L_IFINDEX != 0 {
            self.ifindex.push(0);
        }
    }

    /// The wanted columns in schema order; `valid` is shared by all of them (legs exist or not).
    fn finish(self, n: usize, o: &layout::LegOffsets, valid: &Option<NullBuffer>, out: &mut Vec<ArrayRef>) {
        let w = self.want;
        let counters = if o.bytes.is_some() { valid.clone() } else { all_null(n) };
        if w & L_BYTES != 0 {
            out.push(prim::<UInt64Type>(self.bytes, counters.clone()));
        }
        if w & L_PACKETS != 0 {
            out.push(prim::<UInt32Type>(self.packets, counters));
        }
        if w & L_SEQNO != 0 {
            out.push(prim::<UInt32Type>(self.seqno, valid.clone()));
        }
        for (i, b) in LEG_BITS.into_iter().enumerate() {
            if w & (1 << (3 + i)) == 0 {
                continue;
            }
            let nulls = if b == LEG_WORKLOAD && !o.has_workload { all_null(n) } else { valid.clone() };
            let bits = &self.bits;
            out.push(Arc::new(BooleanArray::new(BooleanBuffer::collect_bool(n, |i| bits[i] & b != 0), nulls)));
        }
        if w & L_IFINDEX != 0 {
            out.push(prim::<UInt32Type>(self.ifindex, valid.clone()));
        }
    }
}

/// Legs' syn/ack/fin/rst bits, for Calico's TCP state rule.
#[derive(Clone, Copy)]
struct LegBits(u32);

/// Calico's display state (facts §6): FINs, then RST, then both legs SYN+ACK.
fn tcp_state(flags: u32, a: LegBits, b: LegBits) -> &'static str {
    let fin = |l: LegBits| l.0 & LEG_FIN != 0;
    let fins = if flags & FLAG_DSR_FWD != 0 { fin(a) || fin(b) } else { fin(a) && fin(b) };
    let estab = |l: LegBits| l.0 & LEG_SYN != 0 && l.0 & LEG_ACK != 0;
    if fins {
        "CLOSED"
    } else if (a.0 | b.0) & LEG_RST != 0 {
        "RESET"
    } else if estab(a) && estab(b) {
        "ESTABLISHED"
    } else {
        "SYN-SENT"
    }
}

/// Decodes chunks of one CT layout and family into record batches: every column of the
/// schema, or only the projected ones (`with_columns`; a column not asked for is not
/// computed at all: asking for `dport` formats no address).
#[derive(Clone)]
pub struct CtDecoder {
    layout: Layout,
    key: KeyOffsets,
    val: ValueOffsets,
    now_ns: u64,
    cols: Columns,
    schema: SchemaRef,
}

impl CtDecoder {
    pub fn new(layout: Layout, family: Family, now_ns: u64) -> Option<Self> {
        Some(CtDecoder {
            layout,
            key: KeyOffsets::new(family),
            val: ValueOffsets::new(layout, family)?,
            now_ns,
            cols: Columns::all(),
            schema: ct_schema(),
        })
    }

    /// Only these columns (kept in schema order).
    pub fn with_columns(mut self, cols: Columns) -> Self {
        let full = ct_schema_with_hidden();
        let idx: Vec<usize> = (0..full.fields().len()).filter(|&i| cols.has(i)).collect();
        self.schema = Arc::new(full.project(&idx).expect("indices from the schema"));
        self.cols = cols;
        self
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn key_offsets(&self) -> &KeyOffsets {
        &self.key
    }

    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn key_size(&self) -> usize {
        self.key.size
    }
    pub fn value_size(&self) -> usize {
        self.val.size
    }

    /// The entry's flags word: flags | flags2 << 8 (| flags3 << 16 | flags4 << 24).
    #[inline]
    pub fn flags(&self, val: &[u8]) -> u32 {
        let mut flags = val[layout::OFF_FLAGS] as u32 | (val[layout::OFF_FLAGS2] as u32) << 8;
        if self.layout.has_high_flags() {
            flags |= (val[layout::OFF_FLAGS3] as u32) << 16 | (val[layout::OFF_FLAGS4] as u32) << 24;
        }
        flags
    }

    /// `idle_s` of an entry last seen at `last_seen` ns.
    #[inline]
    pub fn idle_s(&self, last_seen: u64) -> f64 {
        (self.now_ns as i128 - last_seen as i128) as f64 / 1e9
    }

    /// Decode `n` entries packed back to back in `keys` and `values`.
    pub fn decode(&self, keys: &[u8], values: &[u8], n: usize) -> Result<RecordBatch, ArrowError> {
        if self.cols.0 != 0 && self.cols.0 & !NARROW.0 == 0 {
            return self.decode_narrow(keys, values, n);
        }
        self.decode_rows(keys, values, n)
    }

    /// A projection of only plain numbers (NARROW: `select("dport", "proto")`), column by
    /// column: each column is one tight loop over the entries, none of the per-row branches
    /// and bookkeeping (leg and NAT validity, text builders) the row-at-a-time loop carries
    /// for every column it might produce. Same values as `decode_rows` (a test compares them).
    fn decode_narrow(&self, keys: &[u8], values: &[u8], n: usize) -> Result<RecordBatch, ArrowError> {
        let (ks, vs) = (self.key.size, self.val.size);
        check_lengths(keys, values, n, ks, vs)?;
        let (keys, values) = (&keys[..n * ks], &values[..n * vs]);
        let k = &self.key;
        let c = self.cols;
        let key_u16 = |o: usize| -> Vec<u16> { keys.chunks_exact(ks).map(|key| u16_at(key, o)).collect() };
        // sport/dport: port_a/port_b, swapped when the entry is stored B-to-A.
        let port = |dst: bool| -> Vec<u16> {
            keys.chunks_exact(ks)
                .zip(values.chunks_exact(vs))
                .map(|(key, val)| {
                    let is_ba = self.flags(val) & FLAG_BA != 0;
                    u16_at(key, if is_ba == dst { k.port_a } else { k.port_b })
                })
                .collect()
        };
        let last_seen = || values.chunks_exact(vs).map(|val| u64_at(val, layout::OFF_LAST_SEEN));
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(c.0.count_ones() as usize);
        for i in 0..64 {
            if !c.has(i) {
                continue;
            }
            cols.push(match i {
                C_PROTO => prim::<UInt8Type>(keys.chunks_exact(ks).map(|key| key[0]).collect(), None),
                C_PORT_A => prim::<UInt16Type>(key_u16(k.port_a), None),
                C_PORT_B => prim::<UInt16Type>(key_u16(k.port_b), None),
                C_SPORT => prim::<UInt16Type>(port(false), None),
                C_DPORT => prim::<UInt16Type>(port(true), None),
                C_FLAGS => prim::<UInt32Type>(values.chunks_exact(vs).map(|val| self.flags(val)).collect(), None),
                C_LAST_SEEN => prim::<UInt64Type>(last_seen().collect(), None),
                C_IDLE => prim::<Float64Type>(last_seen().map(|ls| self.idle_s(ls)).collect(), None),
                _ => unreachable!("only NARROW columns get here"),
            });
        }
        let opts = RecordBatchOptions::new().with_row_count(Some(n));
        RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)
    }

    /// Row at a time: any set of columns.
    fn decode_rows(&self, keys: &[u8], values: &[u8], n: usize) -> Result<RecordBatch, ArrowError> {
        let (ks, vs) = (self.key.size, self.val.size);
        check_lengths(keys, values, n, ks, vs)?;
        let k = &self.key;
        let v = &self.val;
        let al = k.addr_len;
        let c = self.cols;
        // Capacity only for wanted columns: an unwanted one stays an empty Vec.
        fn vec<T>(want: bool, n: usize) -> Vec<T> {
            Vec::with_capacity(if want { n } else { 0 })
        }
        let views = |i: usize| Views::new(if c.has(i) { n } else { 0 });
        let (w_addr_a, w_addr_b, w_src, w_dst) = (c.has(C_ADDR_A), c.has(C_ADDR_B), c.has(C_SRC), c.has(C_DST));
        let (w_sport, w_dport, w_flag_names, w_state) = (c.has(C_SPORT), c.has(C_DPORT), c.has(C_FLAG_NAMES), c.has(C_TCP_STATE));
        let (w_ts0, w_idle, w_type) = (c.has(C_RST_SEEN) || c.has(C_CREATED), c.has(C_IDLE), c.has(C_TYPE));
        let w_nat_legs = c.any(C_TUN_IP, C_ORIG_SIP + 1);
        let w_fwd = c.any(C_REV_PROTO, C_NAT_SPORT + 1);
        let (mut proto, mut rev_proto): (Vec<u8>, Vec<u8>) = (vec(c.has(C_PROTO), n), vec(c.has(C_REV_PROTO), n));
        let (mut port_a, mut port_b, mut sport, mut dport): (Vec<u16>, Vec<u16>, Vec<u16>, Vec<u16>) =
            (vec(c.has(C_PORT_A), n), vec(c.has(C_PORT_B), n), vec(w_sport, n), vec(w_dport, n));
        let (mut orig_port, mut orig_sport, mut rev_pa, mut rev_pb, mut nat_sport): (
            Vec<u16>,
            Vec<u16>,
            Vec<u16>,
            Vec<u16>,
            Vec<u16>,
        ) = (
            vec(c.has(C_ORIG_PORT), n),
            vec(c.has(C_ORIG_SPORT), n),
            vec(c.has(C_REV_PORT_A), n),
            vec(c.has(C_REV_PORT_B), n),
            vec(c.has(C_NAT_SPORT), n),
        );
        let mut flags_c: Vec<u32> = vec(c.has(C_FLAGS), n);
        let (mut last_seen, mut ts0_c): (Vec<u64>, Vec<u64>) = (vec(c.has(C_LAST_SEEN), n), vec(w_ts0, n));
        let mut idle: Vec<f64> = vec(w_idle, n);
        let (mut has_legs, mut is_fwd, mut has_state): (Vec<bool>, Vec<bool>, Vec<bool>) =
            (Vec::with_capacity(n), Vec::with_capacity(n), vec(w_state, n));
        let (mut addr_a, mut addr_b, mut src, mut dst) = (views(C_ADDR_A), views(C_ADDR_B), views(C_SRC), views(C_DST));
        let (mut typ, mut state) = (views(C_TYPE), views(C_TCP_STATE));
        let (mut tun_ip, mut orig_ip, mut orig_sip) = (views(C_TUN_IP), views(C_ORIG_IP), views(C_ORIG_SIP));
        let (mut rev_a, mut rev_b) = (views(C_REV_ADDR_A), views(C_REV_ADDR_B));
        let mut flag_offsets: Vec<i32> = vec(w_flag_names, n + 1);
        flag_offsets.push(0);
        let mut flag_values = views(C_FLAG_NAMES);
        let (mut a2b, mut b2a) = (LegCols::new(n, c, C_A2B), LegCols::new(n, c, C_B2A));
        let w_legs = a2b.any() || b2a.any();
        let mut kw: Vec<Vec<u64>> = (0..KEY_WORDS).map(|j| vec(c.has(C_KW + j), n)).collect();
        let mut rkw: Vec<Vec<u64>> = (0..KEY_WORDS).map(|j| vec(c.has(C_RKW + j), n)).collect();
        let (w_kw, w_rkw) = (c.any(C_KW, C_KW + KEY_WORDS), c.any(C_RKW, C_RKW + KEY_WORDS));
        let mut af = AddrFmt::new();
        let mut unknown = String::new();

        for i in 0..n {
            let key = &keys[i * ks..(i + 1) * ks];
            let val = &values[i * vs..(i + 1) * vs];
            let proto_raw = u32_at(key, 0);
            if c.has(C_PROTO) {
                proto.push(proto_raw as u8);
            }
            let (pa, pb) = (u16_at(key, k.port_a), u16_at(key, k.port_b));
            if c.has(C_PORT_A) {
                port_a.push(pa);
            }
            if c.has(C_PORT_B) {
                port_b.push(pb);
            }
            let flags = self.flags(val);
            let is_ba = flags & FLAG_BA != 0;
            if w_addr_a || w_src || w_dst {
                let a_txt = af.fmt(&key[k.addr_a..k.addr_a + al]);
                if w_addr_a {
                    addr_a.push(a_txt);
                }
                if is_ba {
                    if w_dst {
                        dst.push(a_txt)
                    }
                } else if w_src {
                    src.push(a_txt)
                }
            }
            if w_addr_b || w_src || w_dst {
                let b_txt = af.fmt(&key[k.addr_b..k.addr_b + al]);
                if w_addr_b {
                    addr_b.push(b_txt);
                }
                if is_ba {
                    if w_src {
                        src.push(b_txt);
                    }
                } else if w_dst {
                    dst.push(b_txt);
                }
            }
            if w_sport {
                sport.push(if is_ba { pb } else { pa });
            }
            if w_dport {
                dport.push(if is_ba { pa } else { pb });
            }

            let ct_type = val[layout::OFF_TYPE];
            if w_type {
                match ct_type {
                    CT_TYPE_NORMAL => typ.push(b"normal"),
                    CT_TYPE_NAT_FWD => typ.push(b"nat_fwd"),
                    CT_TYPE_NAT_REV => typ.push(b"nat_rev"),
                    t => {
                        unknown.clear();
                        use std::fmt::Write;
                        let _ = write!(unknown, "unknown({t})");
                        typ.push(unknown.as_bytes());
                    }
                }
            }
            if c.has(C_FLAGS) {
                flags_c.push(flags);
            }
            if w_flag_names {
                let mut rest = flags;
                while rest != 0 {
                    let bit = rest & rest.wrapping_neg();
                    flag_values.push(layout::flag_label_in(self.layout, bit).as_bytes());
                    rest &= rest - 1;
                }
                flag_offsets.push(flag_values.views.len() as i32);
            }

            let ls = u64_at(val, layout::OFF_LAST_SEEN);
            if c.has(C_LAST_SEEN) {
                last_seen.push(ls);
            }
            if w_ts0 {
                ts0_c.push(u64_at(val, layout::OFF_TS0));
            }
            if w_idle {
                idle.push(self.idle_s(ls));
            }

            let legs = ct_type == CT_TYPE_NORMAL || ct_type == CT_TYPE_NAT_REV;
            has_legs.push(legs);
            if legs {
                let la = &val[v.a_to_b..];
                let lb = &val[v.b_to_a..];
                if w_legs {
                    a2b.push(la, &v.leg);
                    b2a.push(lb, &v.leg);
                }
                if w_state {
                    // Calico judges the protocol by the key's low byte (`Key.Proto()`), as `proto` does.
                    if proto_raw & 0xff == PROTO_TCP {
                        let bits = |l: &[u8]| LegBits(u32_at(l, v.leg.bits));
                        state.push(tcp_state(flags, bits(la), bits(lb)).as_bytes());
                        has_state.push(true);
                    } else {
                        state.push_null();
                        has_state.push(false);
                    }
                }
                if w_nat_legs {
                    if c.has(C_TUN_IP) {
                        tun_ip.push(af.fmt(&val[v.tun_ip..v.tun_ip + al]));
                    }
                    if c.has(C_ORIG_IP) {
                        orig_ip.push(af.fmt(&val[v.orig_ip..v.orig_ip + al]));
                    }
                    if c.has(C_ORIG_SIP) {
                        orig_sip.push(af.fmt(&val[v.orig_sip..v.orig_sip + al]));
                    }
                    if c.has(C_ORIG_PORT) {
                        orig_port.push(u16_at(val, v.orig_port));
                    }
                    if c.has(C_ORIG_SPORT) {
                        orig_sport.push(u16_at(val, v.orig_sport));
                    }
                }
            } else {
                if w_legs {
                    a2b.push_null();
                    b2a.push_null();
                }
                if w_state {
                    state.push_null();
                    has_state.push(false);
                }
                if w_nat_legs {
                    if c.has(C_TUN_IP) {
                        tun_ip.push_null();
                    }
                    if c.has(C_ORIG_IP) {
                        orig_ip.push_null();
                    }
                    if c.has(C_ORIG_SIP) {
                        orig_sip.push_null();
                    }
                    if c.has(C_ORIG_PORT) {
                        orig_port.push(0);
                    }
                    if c.has(C_ORIG_SPORT) {
                        orig_sport.push(0);
                    }
                }
            }
            let fwd = ct_type == CT_TYPE_NAT_FWD;
            is_fwd.push(fwd);
            if w_kw {
                push_words(&mut kw, c, C_KW, key);
            }
            if w_rkw {
                let rk: &[u8] = if fwd { &val[v.nat_rev_key..v.nat_rev_key + ks] } else { &[] };
                push_words(&mut rkw, c, C_RKW, rk);
            }
            if w_fwd {
                if fwd {
                    let rk = &val[v.nat_rev_key..v.nat_rev_key + ks];
                    if c.has(C_REV_PROTO) {
                        rev_proto.push(u32_at(rk, 0) as u8);
                    }
                    if c.has(C_REV_ADDR_A) {
                        rev_a.push(af.fmt(&rk[k.addr_a..k.addr_a + al]));
                    }
                    if c.has(C_REV_ADDR_B) {
                        rev_b.push(af.fmt(&rk[k.addr_b..k.addr_b + al]));
                    }
                    if c.has(C_REV_PORT_A) {
                        rev_pa.push(u16_at(rk, k.port_a));
                    }
                    if c.has(C_REV_PORT_B) {
                        rev_pb.push(u16_at(rk, k.port_b));
                    }
                    if c.has(C_NAT_SPORT) {
                        nat_sport.push(u16_at(val, v.nat_sport));
                    }
                } else {
                    if c.has(C_REV_PROTO) {
                        rev_proto.push(0);
                    }
                    if c.has(C_REV_ADDR_A) {
                        rev_a.push_null();
                    }
                    if c.has(C_REV_ADDR_B) {
                        rev_b.push_null();
                    }
                    if c.has(C_REV_PORT_A) {
                        rev_pa.push(0);
                    }
                    if c.has(C_REV_PORT_B) {
                        rev_pb.push(0);
                    }
                    if c.has(C_NAT_SPORT) {
                        nat_sport.push(0);
                    }
                }
            }
        }

        let legs_valid = mask(&has_legs);
        let fwd_valid = mask(&is_fwd);
        // The wanted columns, in schema order.
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let mut put = |i: usize, make: &mut dyn FnMut() -> ArrayRef| {
            if c.has(i) {
                cols.push(make());
            }
        };
        let created_here = self.layout.has_created();
        let mut ts0_c = Some(ts0_c);
        put(C_PROTO, &mut || prim::<UInt8Type>(std::mem::take(&mut proto), None));
        put(C_ADDR_A, &mut || Arc::new(std::mem::replace(&mut addr_a, Views::new(0)).finish(None)));
        put(C_PORT_A, &mut || prim::<UInt16Type>(std::mem::take(&mut port_a), None));
        put(C_ADDR_B, &mut || Arc::new(std::mem::replace(&mut addr_b, Views::new(0)).finish(None)));
        put(C_PORT_B, &mut || prim::<UInt16Type>(std::mem::take(&mut port_b), None));
        put(C_SRC, &mut || Arc::new(std::mem::replace(&mut src, Views::new(0)).finish(None)));
        put(C_SPORT, &mut || prim::<UInt16Type>(std::mem::take(&mut sport), None));
        put(C_DST, &mut || Arc::new(std::mem::replace(&mut dst, Views::new(0)).finish(None)));
        put(C_DPORT, &mut || prim::<UInt16Type>(std::mem::take(&mut dport), None));
        put(C_TYPE, &mut || Arc::new(std::mem::replace(&mut typ, Views::new(0)).finish(None)));
        put(C_FLAGS, &mut || prim::<UInt32Type>(std::mem::take(&mut flags_c), None));
        put(C_FLAG_NAMES, &mut || {
            let flag_field = Arc::new(Field::new("item", DataType::Utf8View, true));
            Arc::new(ListArray::new(
                flag_field,
                OffsetBuffer::new(ScalarBuffer::from(std::mem::take(&mut flag_offsets))),
                Arc::new(std::mem::replace(&mut flag_values, Views::new(0)).finish(None)),
                None,
            ))
        });
        put(C_LAST_SEEN, &mut || prim::<UInt64Type>(std::mem::take(&mut last_seen), None));
        // Value offset 0 is `created` in some layouts and `rst_seen` in the others.
        let mut ts0 = |own: bool| {
            if own {
                prim::<UInt64Type>(ts0_c.take().unwrap_or_default(), None)
            } else {
                prim::<UInt64Type>(vec![0; n], all_null(n))
            }
        };
        put(C_RST_SEEN, &mut || ts0(!created_here));
        put(C_CREATED, &mut || ts0(created_here));
        put(C_IDLE, &mut || prim::<Float64Type>(std::mem::take(&mut idle), None));
        put(C_TCP_STATE, &mut || Arc::new(std::mem::replace(&mut state, Views::new(0)).finish(mask(&has_state))));
        drop(put);
        a2b.finish(n, &v.leg, &legs_valid, &mut cols);
        b2a.finish(n, &v.leg, &legs_valid, &mut cols);
        let mut put = |i: usize, make: &mut dyn FnMut() -> ArrayRef| {
            if c.has(i) {
                cols.push(make());
            }
        };
        let lv = || legs_valid.clone();
        let fv = || fwd_valid.clone();
        put(C_TUN_IP, &mut || Arc::new(std::mem::replace(&mut tun_ip, Views::new(0)).finish(lv())));
        put(C_ORIG_IP, &mut || Arc::new(std::mem::replace(&mut orig_ip, Views::new(0)).finish(lv())));
        put(C_ORIG_PORT, &mut || prim::<UInt16Type>(std::mem::take(&mut orig_port), lv()));
        put(C_ORIG_SPORT, &mut || prim::<UInt16Type>(std::mem::take(&mut orig_sport), lv()));
        put(C_ORIG_SIP, &mut || Arc::new(std::mem::replace(&mut orig_sip, Views::new(0)).finish(lv())));
        put(C_REV_PROTO, &mut || prim::<UInt8Type>(std::mem::take(&mut rev_proto), fv()));
        put(C_REV_ADDR_A, &mut || Arc::new(std::mem::replace(&mut rev_a, Views::new(0)).finish(fv())));
        put(C_REV_PORT_A, &mut || prim::<UInt16Type>(std::mem::take(&mut rev_pa), fv()));
        put(C_REV_ADDR_B, &mut || Arc::new(std::mem::replace(&mut rev_b, Views::new(0)).finish(fv())));
        put(C_REV_PORT_B, &mut || prim::<UInt16Type>(std::mem::take(&mut rev_pb), fv()));
        put(C_NAT_SPORT, &mut || prim::<UInt16Type>(std::mem::take(&mut nat_sport), fv()));
        for (j, w) in kw.iter_mut().enumerate() {
            put(C_KW + j, &mut || prim::<UInt64Type>(std::mem::take(w), None));
        }
        for (j, w) in rkw.iter_mut().enumerate() {
            put(C_RKW + j, &mut || prim::<UInt64Type>(std::mem::take(w), fv()));
        }
        drop(put);
        let opts = RecordBatchOptions::new().with_row_count(Some(n));
        RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)
    }
}

/// The wanted words of `key` (little-endian u64s; 0 past its end) onto their columns.
#[inline]
fn push_words(out: &mut [Vec<u64>], c: Columns, first: usize, key: &[u8]) {
    for (j, col) in out.iter_mut().enumerate() {
        if c.has(first + j) {
            let w = key.get(8 * j..8 * j + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
            col.push(w);
        }
    }
}

/// `n` entries of `ks`/`vs` bytes must be there: an error, not a panic, when they are not.
fn check_lengths(keys: &[u8], values: &[u8], n: usize, ks: usize, vs: usize) -> Result<(), ArrowError> {
    let fits = |buf: &[u8], size: usize| n.checked_mul(size).is_some_and(|need| need <= buf.len());
    if fits(keys, ks) && fits(values, vs) {
        return Ok(());
    }
    Err(ArrowError::InvalidArgumentError(format!(
        "{n} entries of {ks}/{vs} bytes do not fit in {} key and {} value bytes",
        keys.len(),
        values.len()
    )))
}

/// `raw` layout: the bytes as stored.
pub fn decode_raw(keys: &[u8], values: &[u8], n: usize, ks: usize, vs: usize) -> Result<RecordBatch, ArrowError> {
    check_lengths(keys, values, n, ks, vs)?;
    let mut k = BinaryBuilder::with_capacity(n, n * ks);
    let mut v = BinaryBuilder::with_capacity(n, n * vs);
    for i in 0..n {
        k.append_value(&keys[i * ks..(i + 1) * ks]);
        v.append_value(&values[i * vs..(i + 1) * vs]);
    }
    RecordBatch::try_new(raw_schema(), vec![Arc::new(k.finish()), Arc::new(v.finish())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{UInt16Type, UInt32Type};

    fn key4(proto: u32, a: [u8; 4], b: [u8; 4], pa: u16, pb: u16) -> Vec<u8> {
        let mut k = proto.to_le_bytes().to_vec();
        k.extend(a);
        k.extend(b);
        k.extend(pa.to_le_bytes());
        k.extend(pb.to_le_bytes());
        k
    }

    #[test]
    fn column_indices_match_the_schema() {
        let s = ct_schema();
        for (name, i) in [
            ("proto", C_PROTO), ("addr_a", C_ADDR_A), ("port_a", C_PORT_A), ("addr_b", C_ADDR_B), ("port_b", C_PORT_B),
            ("src", C_SRC), ("sport", C_SPORT), ("dst", C_DST), ("dport", C_DPORT), ("type", C_TYPE),
            ("flags", C_FLAGS), ("flag_names", C_FLAG_NAMES), ("last_seen_ns", C_LAST_SEEN),
            ("rst_seen_ns", C_RST_SEEN), ("created_ns", C_CREATED), ("idle_s", C_IDLE), ("tcp_state", C_TCP_STATE),
            ("a2b_bytes", C_A2B), ("b2a_bytes", C_B2A), ("tun_ip", C_TUN_IP), ("orig_ip", C_ORIG_IP),
            ("orig_port", C_ORIG_PORT), ("orig_sport", C_ORIG_SPORT), ("orig_sip", C_ORIG_SIP),
            ("rev_proto", C_REV_PROTO), ("rev_addr_a", C_REV_ADDR_A), ("rev_port_a", C_REV_PORT_A),
            ("rev_addr_b", C_REV_ADDR_B), ("rev_port_b", C_REV_PORT_B), ("nat_sport", C_NAT_SPORT),
        ] {
            assert_eq!(s.index_of(name).unwrap(), i, "{name}");
        }
        assert_eq!(s.fields().len(), C_NAT_SPORT + 1);
    }

    #[test]
    fn every_projection_equals_the_full_decode_projected() {
        use crate::synth::{SynthSpec, generate};
        for (layout, family) in [(Layout::V2, Family::V4), (Layout::V3Created, Family::V4), (Layout::V4, Family::V4), (Layout::V3, Family::V6)] {
            let spec = SynthSpec { entries: 3000, max_entries: 4096, layout, family, seed: 7, now_ns: 10u64.pow(13), profile: crate::synth::Profile::Node };
            let (k, v, n) = generate(&spec).unwrap();
            let d = CtDecoder::new(layout, family, 10u64.pow(13)).unwrap();
            let full = d.decode(&k, &v, n).unwrap();
            let names: Vec<String> = ct_schema().fields().iter().map(|f| f.name().clone()).collect();
            let mut picks: Vec<Vec<&str>> = names.iter().map(|n| vec![n.as_str()]).collect();
            picks.push(vec!["dport", "proto"]);
            picks.push(vec!["src", "a2b_syn", "b2a_ifindex", "rev_addr_b", "created_ns", "rst_seen_ns"]);
            picks.push(vec![]);
            for p in picks {
                let b = d.clone().with_columns(Columns::named(&p).unwrap()).decode(&k, &v, n).unwrap();
                assert_eq!(b.num_rows(), n);
                for f in b.schema().fields() {
                    assert_eq!(b.column_by_name(f.name()).unwrap(), full.column_by_name(f.name()).unwrap(), "{layout:?} {f}");
                }
            }
        }
    }

    #[test]
    fn key_words_are_the_key_bytes() {
        let d = CtDecoder::new(Layout::V4, Family::V4, 0).unwrap();
        let k0 = key4(6, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 80);
        let rev = key4(17, [1, 2, 3, 4], [5, 6, 7, 8], 9, 10);
        let mut keys = k0.clone();
        keys.extend(rev.clone());
        let mut vals = vec![0u8; 88];
        vals[16] = CT_TYPE_NAT_FWD;
        vals[24..40].copy_from_slice(&rev);
        vals.extend(vec![0u8; 88]); // the rev entry itself: normal
        let cols = Columns::named(&["_kw0", "_kw1", "_kw4", "_rkw0", "_rkw1"]).unwrap();
        let b = d.with_columns(cols).decode(&keys, &vals, 2).unwrap();
        let w = |n: &str, i: usize| b.column_by_name(n).unwrap().as_primitive::<arrow_array::types::UInt64Type>().value(i);
        assert_eq!(w("_kw0", 0), u64::from_le_bytes(k0[0..8].try_into().unwrap()));
        assert_eq!(w("_kw1", 0), u64::from_le_bytes(k0[8..16].try_into().unwrap()));
        assert_eq!(w("_kw4", 0), 0);
        assert_eq!((w("_rkw0", 0), w("_rkw1", 0)), (w("_kw0", 1), w("_kw1", 1)));
        assert!(b.column_by_name("_rkw0").unwrap().is_null(1));
        assert!(Columns::named(&["_kw9"]).is_err());
    }

    #[test]
    fn formats_ipv4_like_std() {
        let mut f = AddrFmt::new();
        for a in [[0, 0, 0, 0], [10, 0, 0, 1], [255, 255, 255, 255], [192, 168, 100, 9], [1, 20, 0, 99]] {
            assert_eq!(f.fmt(&a), std::net::Ipv4Addr::from(a).to_string().as_bytes());
        }
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 1;
        assert_eq!(f.fmt(&v6), b"fd00::1");
    }

    #[test]
    fn formats_ipv6_like_std() {
        // Every pattern of zero / non-zero hextets (with values of 1 to 4 hex digits), the
        // IPv4-mapped and -compatible forms, and random addresses.
        let mut f = AddrFmt::new();
        let vals = [0u16, 1, 0xa, 0x12, 0x123, 0x1234, 0xffff, 0xf00];
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut check = |segs: [u16; 8]| {
            let a = std::net::Ipv6Addr::from(segs);
            assert_eq!(std::str::from_utf8(f.fmt(&a.octets())).unwrap(), a.to_string(), "{segs:x?}");
        };
        for mask in 0u32..256 {
            for _ in 0..8 {
                let mut segs = [0u16; 8];
                for (i, s) in segs.iter_mut().enumerate() {
                    if mask & (1 << i) != 0 {
                        *s = vals[1 + (rnd() % 7) as usize];
                    }
                }
                check(segs);
            }
        }
        for v4 in [[0u8, 0, 0, 0], [10, 1, 2, 3], [255, 255, 255, 255]] {
            let (a, b) = (u16::from_be_bytes([v4[0], v4[1]]), u16::from_be_bytes([v4[2], v4[3]]));
            check([0, 0, 0, 0, 0, 0xffff, a, b]); // mapped
            check([0, 0, 0, 0, 0, 0, a, b]); // compatible (deprecated: hex)
            check([0, 0, 0, 0, 0, 0xfffe, a, b]);
        }
        for _ in 0..100_000 {
            let r = (rnd() as u128) << 64 | rnd() as u128;
            check(std::net::Ipv6Addr::from(r).segments());
        }
    }

    #[test]
    fn tcp_states_follow_calico() {
        let sa = LegBits(LEG_SYN | LEG_ACK);
        assert_eq!(tcp_state(0, sa, sa), "ESTABLISHED");
        assert_eq!(tcp_state(0, sa, LegBits(LEG_SYN)), "SYN-SENT");
        assert_eq!(tcp_state(0, LegBits(LEG_FIN | LEG_SYN), sa), "SYN-SENT");
        assert_eq!(tcp_state(FLAG_DSR_FWD, LegBits(LEG_FIN), sa), "CLOSED");
        assert_eq!(tcp_state(0, LegBits(LEG_FIN), LegBits(LEG_FIN | LEG_RST)), "CLOSED");
        assert_eq!(tcp_state(0, sa, LegBits(LEG_RST)), "RESET");
    }

    #[test]
    fn decodes_ba_direction_and_nat_fwd() {
        let d = CtDecoder::new(Layout::V4, Family::V4, 2_000_000_000).unwrap();
        let mut keys = key4(6, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 80);
        let mut v0 = vec![0u8; 88];
        v0[8..16].copy_from_slice(&1_000_000_000u64.to_le_bytes());
        v0[17] = 0x00;
        v0[23] = 0x01; // BA
        let mut v1 = vec![0u8; 88];
        v1[16] = CT_TYPE_NAT_FWD;
        v1[24..40].copy_from_slice(&key4(17, [1, 2, 3, 4], [5, 6, 7, 8], 9, 10));
        v1[40..42].copy_from_slice(&4321u16.to_le_bytes());
        keys.extend(key4(17, [10, 0, 0, 3], [10, 96, 0, 10], 5000, 53));
        let mut vals = v0;
        vals.extend(v1);
        let b = d.decode(&keys, &vals, 2).unwrap();
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        assert_eq!(col("src").as_string_view().value(0), "10.0.0.2");
        assert_eq!(col("sport").as_primitive::<UInt16Type>().value(0), 80);
        assert_eq!(col("flags").as_primitive::<UInt32Type>().value(0), 0x100);
        assert_eq!(col("tcp_state").as_string_view().value(0), "SYN-SENT");
        assert!(col("tcp_state").is_null(1));
        assert_eq!(col("type").as_string_view().value(1), "nat_fwd");
        assert_eq!(col("rev_addr_b").as_string_view().value(1), "5.6.7.8");
        assert_eq!(col("nat_sport").as_primitive::<UInt16Type>().value(1), 4321);
        assert!(col("a2b_bytes").is_null(1));
        assert!(col("rev_proto").is_null(0));
        let idle = col("idle_s");
        assert_eq!(idle.as_primitive::<arrow_array::types::Float64Type>().value(0), 1.0);
    }

    /// Calico's own readers per layout (issue 9 §6): ct3 flags are 16 bits (bytes 18–19 are
    /// padding), the leg's workload bit exists from v3.30 only, TCP is the key's low byte.
    #[test]
    fn decodes_as_each_calico_release_reads() {
        let key = key4(0x106, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        let mut v = vec![0u8; 88];
        v[17] = 0x01;
        v[18] = 0x01; // maglev in ct4; padding in ct3
        v[19] = 0x80;
        v[23] = 0x20; // no-dsr
        for leg in [24, 48] {
            v[leg + 16] = (LEG_SYN | LEG_ACK | LEG_WORKLOAD) as u8;
        }
        let names = |b: &RecordBatch| {
            let l = b.column_by_name("flag_names").unwrap().as_list::<i32>().value(0);
            (0..l.len()).map(|i| l.as_string_view().value(i).to_string()).collect::<Vec<_>>()
        };
        for (lay, flags, workload) in [
            (Layout::V3Created, 0x2001, None),
            (Layout::V3, 0x2001, Some(true)),
            (Layout::V4, 0x8001_2001, Some(true)),
        ] {
            let b = CtDecoder::new(lay, Family::V4, 0).unwrap().decode(&key, &v, 1).unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            assert_eq!(col("flags").as_primitive::<UInt32Type>().value(0), flags, "{lay:?}");
            let w = col("a2b_workload");
            assert_eq!(w.is_valid(0).then(|| w.as_boolean().value(0)), workload, "{lay:?}");
            assert_eq!(col("proto").as_primitive::<arrow_array::types::UInt8Type>().value(0), 6);
            assert_eq!(col("tcp_state").as_string_view().value(0), "ESTABLISHED", "{lay:?}");
            if lay == Layout::V4 {
                assert_eq!(names(&b), ["nat-out", "no-dsr", "maglev", "0x80000000"]);
            } else {
                assert_eq!(names(&b), ["nat-out", "no-dsr"]);
            }
        }
        // ct2's reader names flags up to B-A only: later bits are hex there.
        let mut v2 = vec![0u8; 64];
        v2[23] = 0x03; // B-A, host-psnat
        let b = CtDecoder::new(Layout::V2, Family::V4, 0).unwrap().decode(&key, &v2, 1).unwrap();
        assert_eq!(names(&b), ["B-A", "0x200"]);
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::synth::{SynthSpec, generate};

    /// `cargo test --release decode_speed -- --ignored --nocapture`: decode cost alone.
    #[test]
    #[ignore]
    fn decode_speed() {
        let spec = SynthSpec { entries: 1_000_000, max_entries: 2_000_000, layout: Layout::V4, family: Family::V4, seed: 1, now_ns: 10u64.pow(13), profile: crate::synth::Profile::Node };
        let (k, v, n) = generate(&spec).unwrap();
        let d = CtDecoder::new(Layout::V4, Family::V4, 10u64.pow(13)).unwrap();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let mut rows = 0;
            for i in (0..n).step_by(16384) {
                let m = 16384.min(n - i);
                rows += d.decode(&k[i * 16..(i + m) * 16], &v[i * 88..(i + m) * 88], m).unwrap().num_rows();
            }
            eprintln!("decoded {rows} rows in {:?}", t.elapsed());
        }
    }
}
