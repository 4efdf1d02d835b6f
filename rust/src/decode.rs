//! Raw CT entries → Arrow record batches. The column names are ctscope's public schema
//! (README "Schema"); every CT layout produces the same schema, with nulls where a layout
//! or entry type has no such field, so batches from any map concatenate.

use std::net::Ipv6Addr;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, ListBuilder, StringViewBuilder, UInt8Builder, UInt16Builder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
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

/// Canonical text of an address stored in network order, appended without allocating.
struct AddrFmt {
    buf: String,
}

impl AddrFmt {
    fn new() -> Self {
        AddrFmt { buf: String::with_capacity(48) }
    }

    #[inline]
    fn fmt(&mut self, b: &[u8]) -> &str {
        self.buf.clear();
        if b.len() == 4 {
            // Hand-rolled: core's Display for Ipv4Addr costs several times more.
            for (i, &o) in b.iter().enumerate() {
                if i > 0 {
                    self.buf.push('.');
                }
                push_u8(&mut self.buf, o);
            }
        } else {
            let a: [u8; 16] = b.try_into().unwrap();
            use std::fmt::Write;
            let _ = write!(self.buf, "{}", Ipv6Addr::from(a));
        }
        &self.buf
    }
}

#[inline]
fn push_u8(s: &mut String, v: u8) {
    if v >= 100 {
        s.push((b'0' + v / 100) as char);
        s.push((b'0' + (v / 10) % 10) as char);
    } else if v >= 10 {
        s.push((b'0' + v / 10) as char);
    }
    s.push((b'0' + v % 10) as char);
}

struct LegCols {
    bytes: UInt64Builder,
    packets: UInt32Builder,
    seqno: UInt32Builder,
    bits: [BooleanBuilder; 7],
    ifindex: UInt32Builder,
}

const LEG_BITS: [u32; 7] = [LEG_SYN, LEG_ACK, LEG_FIN, LEG_RST, LEG_APPROVED, LEG_OPENER, LEG_WORKLOAD];

impl LegCols {
    fn new(n: usize) -> Self {
        LegCols {
            bytes: UInt64Builder::with_capacity(n),
            packets: UInt32Builder::with_capacity(n),
            seqno: UInt32Builder::with_capacity(n),
            bits: std::array::from_fn(|_| BooleanBuilder::with_capacity(n)),
            ifindex: UInt32Builder::with_capacity(n),
        }
    }

    fn append(&mut self, leg: &[u8], o: &layout::LegOffsets) {
        match o.bytes {
            Some(b) => self.bytes.append_value(u64_at(leg, b)),
            None => self.bytes.append_null(),
        }
        match o.packets {
            Some(p) => self.packets.append_value(u32_at(leg, p)),
            None => self.packets.append_null(),
        }
        // The raw TCP sequence number, stored in network order.
        self.seqno.append_value(u32::from_be_bytes(leg[o.seqno..o.seqno + 4].try_into().unwrap()));
        let bits = u32_at(leg, o.bits);
        for (i, b) in LEG_BITS.iter().enumerate() {
            if *b == LEG_WORKLOAD && !o.has_workload {
                self.bits[i].append_null();
            } else {
                self.bits[i].append_value(bits & b != 0);
            }
        }
        self.ifindex.append_value(u32_at(leg, o.ifindex));
    }

    fn append_null(&mut self) {
        self.bytes.append_null();
        self.packets.append_null();
        self.seqno.append_null();
        for b in &mut self.bits {
            b.append_null();
        }
        self.ifindex.append_null();
    }

    fn finish(&mut self, out: &mut Vec<ArrayRef>) {
        out.push(Arc::new(self.bytes.finish()));
        out.push(Arc::new(self.packets.finish()));
        out.push(Arc::new(self.seqno.finish()));
        for b in &mut self.bits {
            out.push(Arc::new(b.finish()));
        }
        out.push(Arc::new(self.ifindex.finish()));
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
        let k = &self.key;
        let v = &self.val;
        let s = || StringViewBuilder::with_capacity(n);
        let (mut proto, mut port_a, mut port_b, mut sport, mut dport) = (
            UInt8Builder::with_capacity(n),
            UInt16Builder::with_capacity(n),
            UInt16Builder::with_capacity(n),
            UInt16Builder::with_capacity(n),
            UInt16Builder::with_capacity(n),
        );
        let (mut addr_a, mut addr_b, mut src, mut dst, mut typ, mut state) = (s(), s(), s(), s(), s(), s());
        let mut flags_c = UInt32Builder::with_capacity(n);
        let mut flag_names = ListBuilder::with_capacity(StringViewBuilder::new(), n);
        let (mut last_seen, mut rst_seen, mut created) =
            (UInt64Builder::with_capacity(n), UInt64Builder::with_capacity(n), UInt64Builder::with_capacity(n));
        let mut idle = Float64Builder::with_capacity(n);
        let (mut a2b, mut b2a) = (LegCols::new(n), LegCols::new(n));
        let (mut tun_ip, mut orig_ip, mut orig_sip) = (s(), s(), s());
        let (mut orig_port, mut orig_sport) = (UInt16Builder::with_capacity(n), UInt16Builder::with_capacity(n));
        let mut rev_proto = UInt8Builder::with_capacity(n);
        let (mut rev_a, mut rev_b) = (s(), s());
        let (mut rev_pa, mut rev_pb, mut nat_sport) =
            (UInt16Builder::with_capacity(n), UInt16Builder::with_capacity(n), UInt16Builder::with_capacity(n));
        let mut af = AddrFmt::new();
        let al = k.addr_len;

        for i in 0..n {
            let key = &keys[i * ks..(i + 1) * ks];
            let val = &values[i * vs..(i + 1) * vs];
            let proto_raw = u32_at(key, 0);
            proto.append_value(proto_raw as u8);
            let (pa, pb) = (u16_at(key, k.port_a), u16_at(key, k.port_b));
            port_a.append_value(pa);
            port_b.append_value(pb);
            let a_txt = af.fmt(&key[k.addr_a..k.addr_a + al]);
            addr_a.append_value(a_txt);
            let ba = {
                let mut f = val[layout::OFF_FLAGS] as u32 | (val[layout::OFF_FLAGS2] as u32) << 8;
                if self.layout.has_high_flags() {
                    f |= (val[layout::OFF_FLAGS3] as u32) << 16 | (val[layout::OFF_FLAGS4] as u32) << 24;
                }
                f
            };
            let flags = ba;
            let is_ba = flags & FLAG_BA != 0;
            if is_ba {
                dst.append_value(a_txt);
            } else {
                src.append_value(a_txt);
            }
            let b_txt = af.fmt(&key[k.addr_b..k.addr_b + al]);
            addr_b.append_value(b_txt);
            if is_ba {
                src.append_value(b_txt);
                sport.append_value(pb);
                dport.append_value(pa);
            } else {
                dst.append_value(b_txt);
                sport.append_value(pa);
                dport.append_value(pb);
            }

            let ct_type = val[layout::OFF_TYPE];
            match ct_type {
                CT_TYPE_NORMAL => typ.append_value("normal"),
                CT_TYPE_NAT_FWD => typ.append_value("nat_fwd"),
                CT_TYPE_NAT_REV => typ.append_value("nat_rev"),
                t => typ.append_value(format!("unknown({t})")),
            }
            flags_c.append_value(flags);
            let mut rest = flags;
            while rest != 0 {
                let bit = rest & rest.wrapping_neg();
                flag_names.values().append_value(layout::flag_label(bit));
                rest &= rest - 1;
            }
            flag_names.append(true);

            let ls = u64_at(val, layout::OFF_LAST_SEEN);
            last_seen.append_value(ls);
            let ts0 = u64_at(val, layout::OFF_TS0);
            if self.layout.has_created() {
                created.append_value(ts0);
                rst_seen.append_null();
            } else {
                rst_seen.append_value(ts0);
                created.append_null();
            }
            idle.append_value((self.now_ns as i128 - ls as i128) as f64 / 1e9);

            let has_legs = ct_type == CT_TYPE_NORMAL || ct_type == CT_TYPE_NAT_REV;
            if has_legs {
                let la = &val[v.a_to_b..];
                let lb = &val[v.b_to_a..];
                a2b.append(la, &v.leg);
                b2a.append(lb, &v.leg);
                if proto_raw == PROTO_TCP {
                    let bits = |l: &[u8]| LegBits(u32_at(l, v.leg.bits));
                    state.append_value(tcp_state(flags, bits(la), bits(lb)));
                } else {
                    state.append_null();
                }
                tun_ip.append_value(af.fmt(&val[v.tun_ip..v.tun_ip + al]));
                orig_ip.append_value(af.fmt(&val[v.orig_ip..v.orig_ip + al]));
                orig_sip.append_value(af.fmt(&val[v.orig_sip..v.orig_sip + al]));
                orig_port.append_value(u16_at(val, v.orig_port));
                orig_sport.append_value(u16_at(val, v.orig_sport));
            } else {
                a2b.append_null();
                b2a.append_null();
                state.append_null();
                tun_ip.append_null();
                orig_ip.append_null();
                orig_sip.append_null();
                orig_port.append_null();
                orig_sport.append_null();
            }
            if ct_type == CT_TYPE_NAT_FWD {
                let rk = &val[v.nat_rev_key..v.nat_rev_key + ks];
                rev_proto.append_value(u32_at(rk, 0) as u8);
                rev_a.append_value(af.fmt(&rk[k.addr_a..k.addr_a + al]));
                rev_b.append_value(af.fmt(&rk[k.addr_b..k.addr_b + al]));
                rev_pa.append_value(u16_at(rk, k.port_a));
                rev_pb.append_value(u16_at(rk, k.port_b));
                nat_sport.append_value(u16_at(val, v.nat_sport));
            } else {
                rev_proto.append_null();
                rev_a.append_null();
                rev_b.append_null();
                rev_pa.append_null();
                rev_pb.append_null();
                nat_sport.append_null();
            }
        }

        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(proto.finish()),
            Arc::new(addr_a.finish()),
            Arc::new(port_a.finish()),
            Arc::new(addr_b.finish()),
            Arc::new(port_b.finish()),
            Arc::new(src.finish()),
            Arc::new(sport.finish()),
            Arc::new(dst.finish()),
            Arc::new(dport.finish()),
            Arc::new(typ.finish()),
            Arc::new(flags_c.finish()),
            Arc::new(flag_names.finish()),
            Arc::new(last_seen.finish()),
            Arc::new(rst_seen.finish()),
            Arc::new(created.finish()),
            Arc::new(idle.finish()),
            Arc::new(state.finish()),
        ];
        a2b.finish(&mut cols);
        b2a.finish(&mut cols);
        cols.extend([
            Arc::new(tun_ip.finish()) as ArrayRef,
            Arc::new(orig_ip.finish()),
            Arc::new(orig_port.finish()),
            Arc::new(orig_sport.finish()),
            Arc::new(orig_sip.finish()),
            Arc::new(rev_proto.finish()),
            Arc::new(rev_a.finish()),
            Arc::new(rev_pa.finish()),
            Arc::new(rev_b.finish()),
            Arc::new(rev_pb.finish()),
            Arc::new(nat_sport.finish()),
        ]);
        RecordBatch::try_new(self.schema.clone(), cols)
    }
}

/// `raw` layout: the bytes as stored.
pub fn decode_raw(keys: &[u8], values: &[u8], n: usize, ks: usize, vs: usize) -> Result<RecordBatch, ArrowError> {
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
        for a in [[0, 0, 0, 0], [10, 0, 0, 1], [255, 255, 255, 255], [192, 168, 100, 9]] {
            assert_eq!(f.fmt(&a), std::net::Ipv4Addr::from(a).to_string());
        }
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 1;
        assert_eq!(f.fmt(&v6), "fd00::1");
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
}
