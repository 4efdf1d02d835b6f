//! Raw CT entries → Arrow record batches. The column names are ctscope's public schema
//! (README "Schema"); every CT layout produces the same schema, with nulls where a layout
//! or entry type has no such field, so batches from any map concatenate.

use std::net::Ipv6Addr;
use std::sync::Arc;

use arrow_array::builder::BinaryBuilder;
use arrow_array::types::{Float64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type};
use arrow_array::{ArrayRef, ArrowPrimitiveType, BooleanArray, ListArray, PrimitiveArray, RecordBatch, StringViewArray};
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

/// The schema of `raw` dumps: undecoded bytes of any hash map.
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, false),
    ]))
}

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
    v6: String,
}

impl AddrFmt {
    fn new() -> Self {
        AddrFmt { buf: [0; 48], v6: String::with_capacity(48) }
    }

    #[inline]
    fn fmt(&mut self, b: &[u8]) -> &[u8] {
        // Unused NAT fields are all zeros on most entries: skip the formatting.
        if b.iter().all(|&x| x == 0) {
            return if b.len() == 4 { b"0.0.0.0" } else { b"::" };
        }
        if b.len() == 4 {
            // Hand-rolled: core's Display for Ipv4Addr costs several times more.
            let mut n = 0;
            for (i, &o) in b.iter().enumerate() {
                if i > 0 {
                    self.buf[n] = b'.';
                    n += 1;
                }
                n += push_u8(&mut self.buf[n..], o);
            }
            &self.buf[..n]
        } else {
            use std::fmt::Write;
            let a: [u8; 16] = b.try_into().unwrap();
            self.v6.clear();
            let _ = write!(self.v6, "{}", Ipv6Addr::from(a));
            self.v6.as_bytes()
        }
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

/// One leg's columns, kept as plain vectors until the batch is finished.
struct LegCols {
    bytes: Vec<u64>,
    packets: Vec<u32>,
    seqno: Vec<u32>,
    bits: Vec<u32>,
    ifindex: Vec<u32>,
}

const LEG_BITS: [u32; 7] = [LEG_SYN, LEG_ACK, LEG_FIN, LEG_RST, LEG_APPROVED, LEG_OPENER, LEG_WORKLOAD];

impl LegCols {
    fn new(n: usize) -> Self {
        LegCols {
            bytes: Vec::with_capacity(n),
            packets: Vec::with_capacity(n),
            seqno: Vec::with_capacity(n),
            bits: Vec::with_capacity(n),
            ifindex: Vec::with_capacity(n),
        }
    }

    #[inline]
    fn push(&mut self, leg: &[u8], o: &layout::LegOffsets) {
        self.bytes.push(o.bytes.map_or(0, |b| u64_at(leg, b)));
        self.packets.push(o.packets.map_or(0, |p| u32_at(leg, p)));
        // The raw TCP sequence number, stored in network order.
        self.seqno.push(u32::from_be_bytes(leg[o.seqno..o.seqno + 4].try_into().unwrap()));
        self.bits.push(u32_at(leg, o.bits));
        self.ifindex.push(u32_at(leg, o.ifindex));
    }

    #[inline]
    fn push_null(&mut self) {
        self.bytes.push(0);
        self.packets.push(0);
        self.seqno.push(0);
        self.bits.push(0);
        self.ifindex.push(0);
    }

    /// Columns in schema order; `valid` is shared by all of them (legs exist or not).
    fn finish(self, o: &layout::LegOffsets, valid: &Option<NullBuffer>, out: &mut Vec<ArrayRef>) {
        let n = self.bits.len();
        let counters = if o.bytes.is_some() { valid.clone() } else { all_null(n) };
        out.push(prim::<UInt64Type>(self.bytes, counters.clone()));
        out.push(prim::<UInt32Type>(self.packets, counters));
        out.push(prim::<UInt32Type>(self.seqno, valid.clone()));
        for b in LEG_BITS {
            let nulls = if b == LEG_WORKLOAD && !o.has_workload { all_null(n) } else { valid.clone() };
            let bits = &self.bits;
            out.push(Arc::new(BooleanArray::new(BooleanBuffer::collect_bool(n, |i| bits[i] & b != 0), nulls)));
        }
        out.push(prim::<UInt32Type>(self.ifindex, valid.clone()));
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

/// Decodes chunks of one CT layout and family into record batches.
#[derive(Clone)]
pub struct CtDecoder {
    layout: Layout,
    key: KeyOffsets,
    val: ValueOffsets,
    now_ns: u64,
    schema: SchemaRef,
}

impl CtDecoder {
    pub fn new(layout: Layout, family: Family, now_ns: u64) -> Option<Self> {
        Some(CtDecoder {
            layout,
            key: KeyOffsets::new(family),
            val: ValueOffsets::new(layout, family)?,
            now_ns,
            schema: ct_schema(),
        })
    }

    pub fn key_size(&self) -> usize {
        self.key.size
    }
    pub fn value_size(&self) -> usize {
        self.val.size
    }

    /// Decode `n` entries packed back to back in `keys` and `values`.
    pub fn decode(&self, keys: &[u8], values: &[u8], n: usize) -> Result<RecordBatch, ArrowError> {
        let (ks, vs) = (self.key.size, self.val.size);
        check_lengths(keys, values, n, ks, vs)?;
        let k = &self.key;
        let v = &self.val;
        let al = k.addr_len;
        let (mut proto, mut rev_proto): (Vec<u8>, Vec<u8>) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut port_a, mut port_b, mut sport, mut dport): (Vec<u16>, Vec<u16>, Vec<u16>, Vec<u16>) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut orig_port, mut orig_sport, mut rev_pa, mut rev_pb, mut nat_sport): (
            Vec<u16>,
            Vec<u16>,
            Vec<u16>,
            Vec<u16>,
            Vec<u16>,
        ) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let mut flags_c: Vec<u32> = Vec::with_capacity(n);
        let (mut last_seen, mut ts0_c): (Vec<u64>, Vec<u64>) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut idle: Vec<f64> = Vec::with_capacity(n);
        let (mut has_legs, mut is_fwd, mut has_state): (Vec<bool>, Vec<bool>, Vec<bool>) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let s = || Views::new(n);
        let (mut addr_a, mut addr_b, mut src, mut dst, mut typ, mut state) = (s(), s(), s(), s(), s(), s());
        let (mut tun_ip, mut orig_ip, mut orig_sip, mut rev_a, mut rev_b) = (s(), s(), s(), s(), s());
        let mut flag_offsets: Vec<i32> = Vec::with_capacity(n + 1);
        flag_offsets.push(0);
        let mut flag_values = Views::new(n);
        let (mut a2b, mut b2a) = (LegCols::new(n), LegCols::new(n));
        let mut af = AddrFmt::new();
        let mut unknown = String::new();

        for i in 0..n {
            let key = &keys[i * ks..(i + 1) * ks];
            let val = &values[i * vs..(i + 1) * vs];
            let proto_raw = u32_at(key, 0);
            proto.push(proto_raw as u8);
            let (pa, pb) = (u16_at(key, k.port_a), u16_at(key, k.port_b));
            port_a.push(pa);
            port_b.push(pb);
            let mut flags = val[layout::OFF_FLAGS] as u32 | (val[layout::OFF_FLAGS2] as u32) << 8;
            if self.layout.has_high_flags() {
                flags |= (val[layout::OFF_FLAGS3] as u32) << 16 | (val[layout::OFF_FLAGS4] as u32) << 24;
            }
            let is_ba = flags & FLAG_BA != 0;
            let a_txt = af.fmt(&key[k.addr_a..k.addr_a + al]);
            addr_a.push(a_txt);
            if is_ba { dst.push(a_txt) } else { src.push(a_txt) }
            let b_txt = af.fmt(&key[k.addr_b..k.addr_b + al]);
            addr_b.push(b_txt);
            if is_ba {
                src.push(b_txt);
                sport.push(pb);
                dport.push(pa);
            } else {
                dst.push(b_txt);
                sport.push(pa);
                dport.push(pb);
            }

            let ct_type = val[layout::OFF_TYPE];
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
            flags_c.push(flags);
            let mut rest = flags;
            while rest != 0 {
                let bit = rest & rest.wrapping_neg();
                flag_values.push(layout::flag_label_in(self.layout, bit).as_bytes());
                rest &= rest - 1;
            }
            flag_offsets.push(flag_values.views.len() as i32);

            let ls = u64_at(val, layout::OFF_LAST_SEEN);
            last_seen.push(ls);
            ts0_c.push(u64_at(val, layout::OFF_TS0));
            idle.push((self.now_ns as i128 - ls as i128) as f64 / 1e9);

            let legs = ct_type == CT_TYPE_NORMAL || ct_type == CT_TYPE_NAT_REV;
            has_legs.push(legs);
            if legs {
                let la = &val[v.a_to_b..];
                let lb = &val[v.b_to_a..];
                a2b.push(la, &v.leg);
                b2a.push(lb, &v.leg);
                // Calico judges the protocol by the key's low byte (`Key.Proto()`), as `proto` does.
                if proto_raw & 0xff == PROTO_TCP {
                    let bits = |l: &[u8]| LegBits(u32_at(l, v.leg.bits));
                    state.push(tcp_state(flags, bits(la), bits(lb)).as_bytes());
                    has_state.push(true);
                } else {
                    state.push_null();
                    has_state.push(false);
                }
                tun_ip.push(af.fmt(&val[v.tun_ip..v.tun_ip + al]));
                orig_ip.push(af.fmt(&val[v.orig_ip..v.orig_ip + al]));
                orig_sip.push(af.fmt(&val[v.orig_sip..v.orig_sip + al]));
                orig_port.push(u16_at(val, v.orig_port));
                orig_sport.push(u16_at(val, v.orig_sport));
            } else {
                a2b.push_null();
                b2a.push_null();
                state.push_null();
                has_state.push(false);
                tun_ip.push_null();
                orig_ip.push_null();
                orig_sip.push_null();
                orig_port.push(0);
                orig_sport.push(0);
            }
            let fwd = ct_type == CT_TYPE_NAT_FWD;
            is_fwd.push(fwd);
            if fwd {
                let rk = &val[v.nat_rev_key..v.nat_rev_key + ks];
                rev_proto.push(u32_at(rk, 0) as u8);
                rev_a.push(af.fmt(&rk[k.addr_a..k.addr_a + al]));
                rev_b.push(af.fmt(&rk[k.addr_b..k.addr_b + al]));
                rev_pa.push(u16_at(rk, k.port_a));
                rev_pb.push(u16_at(rk, k.port_b));
                nat_sport.push(u16_at(val, v.nat_sport));
            } else {
                rev_proto.push(0);
                rev_a.push_null();
                rev_b.push_null();
                rev_pa.push(0);
                rev_pb.push(0);
                nat_sport.push(0);
            }
        }

        let legs_valid = mask(&has_legs);
        let fwd_valid = mask(&is_fwd);
        let (created, rst_seen) = if self.layout.has_created() {
            (prim::<UInt64Type>(ts0_c, None), prim::<UInt64Type>(vec![0; n], all_null(n)))
        } else {
            (prim::<UInt64Type>(vec![0; n], all_null(n)), prim::<UInt64Type>(ts0_c, None))
        };
        let flag_field = Arc::new(Field::new("item", DataType::Utf8View, true));
        let flag_names = ListArray::new(
            flag_field,
            OffsetBuffer::new(ScalarBuffer::from(flag_offsets)),
            Arc::new(flag_values.finish(None)),
            None,
        );
        let mut cols: Vec<ArrayRef> = vec![
            prim::<UInt8Type>(proto, None),
            Arc::new(addr_a.finish(None)),
            prim::<UInt16Type>(port_a, None),
            Arc::new(addr_b.finish(None)),
            prim::<UInt16Type>(port_b, None),
            Arc::new(src.finish(None)),
            prim::<UInt16Type>(sport, None),
            Arc::new(dst.finish(None)),
            prim::<UInt16Type>(dport, None),
            Arc::new(typ.finish(None)),
            prim::<UInt32Type>(flags_c, None),
            Arc::new(flag_names),
            prim::<UInt64Type>(last_seen, None),
            rst_seen,
            created,
            prim::<Float64Type>(idle, None),
            Arc::new(state.finish(mask(&has_state))),
        ];
        a2b.finish(&v.leg, &legs_valid, &mut cols);
        b2a.finish(&v.leg, &legs_valid, &mut cols);
        cols.extend([
            Arc::new(tun_ip.finish(legs_valid.clone())) as ArrayRef,
            Arc::new(orig_ip.finish(legs_valid.clone())),
            prim::<UInt16Type>(orig_port, legs_valid.clone()),
            prim::<UInt16Type>(orig_sport, legs_valid.clone()),
            Arc::new(orig_sip.finish(legs_valid.clone())),
            prim::<UInt8Type>(rev_proto, fwd_valid.clone()),
            Arc::new(rev_a.finish(fwd_valid.clone())),
            prim::<UInt16Type>(rev_pa, fwd_valid.clone()),
            Arc::new(rev_b.finish(fwd_valid.clone())),
            prim::<UInt16Type>(rev_pb, fwd_valid.clone()),
            prim::<UInt16Type>(nat_sport, fwd_valid),
        ]);
        RecordBatch::try_new(self.schema.clone(), cols)
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
        let spec = SynthSpec { entries: 1_000_000, max_entries: 2_000_000, layout: Layout::V4, family: Family::V4, seed: 1, now_ns: 10u64.pow(13) };
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
