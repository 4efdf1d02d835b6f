//! Predicate pushdown: the part of a row filter that can be judged on an entry's raw key
//! and value bytes, before anything is decoded.
//!
//! Python translates a polars predicate into this small IR (`ctscope.pushdown`); every
//! node reads only columns that are never null (proto, ports, addresses, type, flags,
//! last_seen, idle), so NOT is plain negation. The IR is a prefilter: where Python could
//! not translate part of a predicate it keeps a superset of rows, and the full predicate
//! is always applied again in polars on the decoded rows, so pushdown never changes a
//! result, only what is decoded.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::decode::CtDecoder;
use crate::iter::Chunk;
use crate::layout::FLAG_BA;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumField {
    Proto,
    PortA,
    PortB,
    Sport,
    Dport,
    Flags,
    LastSeen,
    /// The entry type byte (0 normal, 1 nat_fwd, 2 nat_rev, others "unknown(N)").
    Type,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrField {
    A,
    B,
    Src,
    Dst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    #[inline]
    fn test<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Pred {
    Const(bool),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
    /// `field op value`
    Cmp(NumField, Op, i128),
    /// `field` is one of `values` (sorted).
    In(NumField, Vec<i128>),
    /// `(field & mask) op value`
    Masked(NumField, u64, Op, i128),
    /// `idle_s op value`, computed exactly as the decoder computes it.
    Idle(Op, f64),
    /// The address is in one of these networks (bytes in network order, prefix length);
    /// a full-length prefix is equality. Networks of the other family never match.
    Addr(AddrField, Vec<(Vec<u8>, u8)>),
}

/// One entry's bytes, as the predicate sees them.
struct Row<'a> {
    key: &'a [u8],
    val: &'a [u8],
    dec: &'a CtDecoder,
}

impl Row<'_> {
    fn num(&self, f: NumField) -> u64 {
        let k = self.dec.key_offsets();
        let port = |o: usize| u16::from_le_bytes([self.key[o], self.key[o + 1]]) as u64;
        let ba = || self.dec.flags(self.val) & FLAG_BA != 0;
        match f {
            NumField::Proto => u32::from_le_bytes(self.key[0..4].try_into().unwrap()) as u8 as u64,
            NumField::PortA => port(k.port_a),
            NumField::PortB => port(k.port_b),
            NumField::Sport => port(if ba() { k.port_b } else { k.port_a }),
            NumField::Dport => port(if ba() { k.port_a } else { k.port_b }),
            NumField::Flags => self.dec.flags(self.val) as u64,
            NumField::LastSeen => u64::from_le_bytes(self.val[8..16].try_into().unwrap()),
            NumField::Type => self.val[crate::layout::OFF_TYPE] as u64,
        }
    }

    fn addr(&self, f: AddrField) -> &[u8] {
        let k = self.dec.key_offsets();
        let (a, b) = (&self.key[k.addr_a..k.addr_a + k.addr_len], &self.key[k.addr_b..k.addr_b + k.addr_len]);
        let ba = || self.dec.flags(self.val) & FLAG_BA != 0;
        match f {
            AddrField::A => a,
            AddrField::B => b,
            AddrField::Src => if ba() { b } else { a },
            AddrField::Dst => if ba() { a } else { b },
        }
    }
}

fn in_net(addr: &[u8], net: &[u8], prefix: u8) -> bool {
    if addr.len() != net.len() || prefix as usize > 8 * net.len() {
        return false;
    }
    let (full, rest) = (prefix as usize / 8, prefix % 8);
    if addr[..full] != net[..full] {
        return false;
    }
    rest == 0 || (addr[full] ^ net[full]) & (0xffu8 << (8 - rest)) == 0
}

impl Pred {
    fn eval(&self, r: &Row) -> bool {
        match self {
            Pred::Const(b) => *b,
            Pred::And(ps) => ps.iter().all(|p| p.eval(r)),
            Pred::Or(ps) => ps.iter().any(|p| p.eval(r)),
            Pred::Not(p) => !p.eval(r),
            Pred::Cmp(f, op, v) => op.test(r.num(*f) as i128, *v),
            Pred::In(f, vs) => vs.binary_search(&(r.num(*f) as i128)).is_ok(),
            Pred::Masked(f, m, op, v) => op.test((r.num(*f) & m) as i128, *v),
            Pred::Idle(op, v) => {
                let ls = r.num(NumField::LastSeen);
                op.test(r.dec.idle_s(ls), *v)
            }
            Pred::Addr(f, nets) => {
                let a = r.addr(*f);
                nets.iter().any(|(n, p)| in_net(a, n, *p))
            }
        }
    }

    /// The entries of `c` this predicate keeps (a copy; `c` when it keeps them all).
    pub fn select(&self, dec: &CtDecoder, c: &Chunk) -> Option<Chunk> {
        let (ks, vs) = (dec.key_size(), dec.value_size());
        if c.keys.len() < c.count * ks || c.values.len() < c.count * vs {
            return None; // the decoder reports the short chunk
        }
        let mut keep = Vec::with_capacity(c.count);
        for i in 0..c.count {
            let r = Row { key: &c.keys[i * ks..(i + 1) * ks], val: &c.values[i * vs..(i + 1) * vs], dec };
            if self.eval(&r) {
                keep.push(i);
            }
        }
        if keep.len() == c.count {
            return None;
        }
        let mut out = Chunk { keys: Vec::with_capacity(keep.len() * ks), values: Vec::with_capacity(keep.len() * vs), count: keep.len() };
        for i in keep {
            out.keys.extend_from_slice(&c.keys[i * ks..(i + 1) * ks]);
            out.values.extend_from_slice(&c.values[i * vs..(i + 1) * vs]);
        }
        Some(out)
    }

    /// From the nested tuples `ctscope.pushdown` builds (see its docstring).
    pub fn from_py(o: &Bound<'_, PyAny>) -> PyResult<Pred> {
        let tag: String = o.get_item(0)?.extract()?;
        let item = |i: usize| o.get_item(i);
        let list = |i: usize| -> PyResult<Vec<Pred>> {
            item(i)?.try_iter()?.map(|x| Pred::from_py(&x?)).collect()
        };
        Ok(match tag.as_str() {
            "const" => Pred::Const(item(1)?.extract()?),
            "and" => Pred::And(list(1)?),
            "or" => Pred::Or(list(1)?),
            "not" => Pred::Not(Box::new(Pred::from_py(&item(1)?)?)),
            "cmp" => Pred::Cmp(num_field(&item(1)?.extract::<String>()?)?, op(&item(2)?.extract::<String>()?)?, item(3)?.extract()?),
            "in" => {
                let mut vs: Vec<i128> = item(2)?.extract()?;
                vs.sort_unstable();
                Pred::In(num_field(&item(1)?.extract::<String>()?)?, vs)
            }
            "mask" => Pred::Masked(
                num_field(&item(1)?.extract::<String>()?)?,
                item(2)?.extract()?,
                op(&item(3)?.extract::<String>()?)?,
                item(4)?.extract()?,
            ),
            "idle" => Pred::Idle(op(&item(1)?.extract::<String>()?)?, item(2)?.extract()?),
            "addr" => {
                let f = match item(1)?.extract::<String>()?.as_str() {
                    "addr_a" => AddrField::A,
                    "addr_b" => AddrField::B,
                    "src" => AddrField::Src,
                    "dst" => AddrField::Dst,
                    o => return Err(PyValueError::new_err(format!("predicate: no address column {o:?}"))),
                };
                Pred::Addr(f, item(2)?.extract()?)
            }
            t => return Err(PyValueError::new_err(format!("predicate: unknown node {t:?}"))),
        })
    }
}

fn num_field(s: &str) -> PyResult<NumField> {
    Ok(match s {
        "proto" => NumField::Proto,
        "port_a" => NumField::PortA,
        "port_b" => NumField::PortB,
        "sport" => NumField::Sport,
        "dport" => NumField::Dport,
        "flags" => NumField::Flags,
        "last_seen_ns" => NumField::LastSeen,
        "type" => NumField::Type,
        o => return Err(PyValueError::new_err(format!("predicate: no numeric column {o:?}"))),
    })
}

fn op(s: &str) -> PyResult<Op> {
    Ok(match s {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "lt" => Op::Lt,
        "le" => Op::Le,
        "gt" => Op::Gt,
        "ge" => Op::Ge,
        o => return Err(PyValueError::new_err(format!("predicate: unknown operator {o:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        assert!(in_net(&[10, 1, 2, 3], &[10, 0, 0, 0], 8));
        assert!(!in_net(&[11, 1, 2, 3], &[10, 0, 0, 0], 8));
        assert!(in_net(&[10, 1, 2, 3], &[10, 1, 2, 0], 23));
        assert!(!in_net(&[10, 1, 4, 3], &[10, 1, 2, 0], 23));
        assert!(in_net(&[10, 1, 2, 3], &[10, 1, 2, 3], 32));
        assert!(!in_net(&[10, 1, 2, 3], &[10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0));
        assert!(in_net(&[1, 2, 3, 4], &[0, 0, 0, 0], 0));
    }
}
