//! Realistic synthetic Calico CT maps for demos, tests and benchmarks: pods talking to
//! services (NAT fwd + rev pairs), to each other and to the outside, over TCP in every
//! state, UDP, ICMP and other protocols, in both key orders, with a spread of idle ages.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::error::{CtError, Result};
use crate::layout::{
    self, CT_TYPE_NAT_FWD, CT_TYPE_NAT_REV, CT_TYPE_NORMAL, FLAG_BA, Family, KeyOffsets, LEG_ACK, LEG_APPROVED,
    LEG_FIN, LEG_OPENER, LEG_RST, LEG_SYN, LEG_WORKLOAD, Layout, ValueOffsets,
};
use crate::sys::{self, BPF_ANY, CreateParams};

/// SplitMix64: tiny, fast, and reproducible from `--seed`.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Clone, Copy, Default)]
struct Leg {
    bytes: u64,
    packets: u32,
    seqno: u32,
    bits: u32,
    ifindex: u32,
}

/// Writes entries in one layout's byte format.
struct Encoder {
    layout: Layout,
    fam: Family,
    k: KeyOffsets,
    v: ValueOffsets,
}

impl Encoder {
    fn addr(&self, buf: &mut [u8], off: usize, a: &[u8; 16]) {
        let n = self.fam.addr_len();
        buf[off..off + n].copy_from_slice(&a[16 - n..]);
    }

    /// Calico's key order: A is the source iff src < dst (big-endian words compared as
    /// native u32), or equal addresses and sport < dport. Returns (key, swapped).
    fn key(&self, proto: u32, src: &[u8; 16], sport: u16, dst: &[u8; 16], dport: u16) -> (Vec<u8>, bool) {
        let words = |a: &[u8; 16]| -> Vec<u32> {
            a[16 - self.fam.addr_len()..].chunks(4).map(|w| u32::from_ne_bytes(w.try_into().unwrap())).collect()
        };
        let (ws, wd) = (words(src), words(dst));
        let src_first = ws < wd || (ws == wd && sport < dport);
        let (a, pa, b, pb) = if src_first { (src, sport, dst, dport) } else { (dst, dport, src, sport) };
        let mut key = vec![0u8; self.k.size];
        key[0..4].copy_from_slice(&proto.to_le_bytes());
        self.addr(&mut key, self.k.addr_a, a);
        self.addr(&mut key, self.k.addr_b, b);
        key[self.k.port_a..self.k.port_a + 2].copy_from_slice(&pa.to_le_bytes());
        key[self.k.port_b..self.k.port_b + 2].copy_from_slice(&pb.to_le_bytes());
        (key, !src_first)
    }

    fn header(&self, val: &mut [u8], ts0: u64, last_seen: u64, ct_type: u8, flags: u32) {
        val[0..8].copy_from_slice(&ts0.to_le_bytes());
        val[8..16].copy_from_slice(&last_seen.to_le_bytes());
        val[layout::OFF_TYPE] = ct_type;
        val[layout::OFF_FLAGS] = flags as u8;
        val[layout::OFF_FLAGS2] = (flags >> 8) as u8;
        if self.layout.has_high_flags() {
            val[layout::OFF_FLAGS3] = (flags >> 16) as u8;
            val[layout::OFF_FLAGS4] = (flags >> 24) as u8;
        }
    }

    fn leg(&self, val: &mut [u8], off: usize, l: &Leg) {
        let o = &self.v.leg;
        if let Some(b) = o.bytes {
            val[off + b..off + b + 8].copy_from_slice(&l.bytes.to_le_bytes());
        }
        if let Some(p) = o.packets {
            val[off + p..off + p + 4].copy_from_slice(&l.packets.to_le_bytes());
        }
        val[off + o.seqno..off + o.seqno + 4].copy_from_slice(&l.seqno.to_be_bytes());
        let bits = if o.has_workload { l.bits } else { l.bits & !LEG_WORKLOAD };
        val[off + o.bits..off + o.bits + 4].copy_from_slice(&bits.to_le_bytes());
        val[off + o.ifindex..off + o.ifindex + 4].copy_from_slice(&l.ifindex.to_le_bytes());
    }
}

/// Addresses as 16 bytes; IPv4 in the last four.
fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[12..].copy_from_slice(&[a, b, c, d]);
    x
}
fn v6(prefix: u16, sub: u16, host: u32) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[0..2].copy_from_slice(&0xfd00u16.to_be_bytes());
    x[2..4].copy_from_slice(&prefix.to_be_bytes());
    x[4..6].copy_from_slice(&sub.to_be_bytes());
    x[12..16].copy_from_slice(&host.to_be_bytes());
    x
}

pub struct SynthSpec {
    pub entries: u64,
    pub max_entries: u32,
    pub layout: Layout,
    pub family: Family,
    pub seed: u64,
    pub now_ns: u64,
    pub profile: Profile,
}

/// What the entries look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Few clients with many ports each, short addresses (10.244.x.y), dport 443 on ~10 %.
    Classic,
    /// A busy node's map (README "Performance"): 20,000 client pods and 20,000 backend pods
    /// in 10.100.0.0/14, 2,000 services in 172.20.0.0/16, outside peers: addresses of 10–15
    /// characters; ephemeral source ports; a dozen service ports, 443 on ~1 % of entries;
    /// ~20 % of entries NAT (fwd + rev pairs, rev with the service's orig IP and port).
    Node,
}

impl Profile {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "classic" => Ok(Profile::Classic),
            "node" => Ok(Profile::Node),
            o => Err(CtError::BadArgument(format!("unknown synth profile {o:?}: expected classic or node"))),
        }
    }
}

/// Result of writing a synthetic map.
pub struct SynthReport {
    pub written: u64,
    pub map_type: u32,
    pub name: String,
}

/// Build `spec.entries` entries as (keys, values) byte vectors.
pub fn generate(spec: &SynthSpec) -> Result<(Vec<u8>, Vec<u8>, usize)> {
    let enc = Encoder {
        layout: spec.layout,
        fam: spec.family,
        k: KeyOffsets::new(spec.family),
        v: ValueOffsets::new(spec.layout, spec.family)
            .ok_or_else(|| CtError::BadArgument(format!("layout {} has no IPv{} form", spec.layout.name(), spec.family.number())))?,
    };
    let (ks, vs) = (enc.k.size, enc.v.size);
    let n = spec.entries as usize;
    let mut keys = Vec::with_capacity(n * ks);
    let mut vals = Vec::with_capacity(n * vs);
    let mut rng = Rng::new(spec.seed);
    let v6fam = spec.family == Family::V6;
    // Clients: pod p uses source ports 32768.. so (pod, sport) never repeats.
    const PORTS: u64 = 28000;
    let node = spec.profile == Profile::Node;
    // Node profile: client c = i mod CLIENTS, its source port a permutation of i / CLIENTS,
    // so (client, sport) never repeats for up to CLIENTS × 28,000 entries.
    const CLIENTS: u64 = 20_000;
    // A bijection of 18-bit numbers (odd multiplier): distinct indices, distinct addresses.
    let scatter = |x: u64, salt: u64| -> u32 { ((x * 0x9e37 + salt * 0x1_2345) & 0x3_ffff) as u32 };
    let pod_addr = |h: u32| -> [u8; 16] {
        // 10.100.0.0/14: "10.100.0.1" to "10.103.255.254" (10–14 characters)
        if v6fam { v6(0x10, 0x64 + (h >> 16) as u16, h & 0xffff) } else { v4(10, 100 + ((h >> 16) as u8 & 3), (h >> 8) as u8, h as u8) }
    };
    let pod = |i: u64| -> [u8; 16] {
        if node {
            return pod_addr(scatter(i % CLIENTS, 1));
        }
        let p = (i / PORTS) as u32 + 1;
        if v6fam { v6(0x10, 0x244, p) } else { v4(10, 244, (p >> 8) as u8, p as u8) }
    };
    let mut count = 0usize;
    let mut i = 0u64;
    while count < n {
        let src = pod(i);
        let sport = if node {
            32768 + ((i / CLIENTS) * 7919 % PORTS) as u16
        } else {
            32768 + (i % PORTS) as u16
        };
        i += 1;
        let r = rng.below(1000);
        let (proto, dport): (u32, u16) = match r {
            0..=599 if node => (6, match rng.below(600) {
                0..=9 => 443, // ~1 % of entries
                p => [80, 8080, 5432, 6379, 9090, 3000, 8443, 9200, 27017, 11211][(p % 10) as usize],
            }),
            600..=899 if node => (17, [53, 123, 8125, 4789, 5353][rng.below(5) as usize]),
            0..=599 => (6, [80, 443, 5432, 6379, 8080, 9090][rng.below(6) as usize]),
            600..=899 => (17, [53, 123, 8125, 4789][rng.below(4) as usize]),
            900..=969 => (if v6fam { 58 } else { 1 }, 0),
            _ => ([132u32, 47, 253][rng.below(3) as usize], 0),
        };
        let (sport, dport) = match proto {
            6 | 17 => (sport, dport),
            1 | 58 => (sport, 0), // ICMP: the echo id, dport 0
            _ => (0, 0),
        };
        // Non-TCP/UDP keys carry no ports: keep them unique by giving each its own client.
        let src = if sport == 0 {
            if v6fam { v6(0x11, 0, i as u32) } else { v4(10, 128 + ((i >> 16) & 0x7f) as u8, (i >> 8) as u8, i as u8) }
        } else {
            src
        };
        let backend = if node {
            pod_addr(scatter(rng.below(CLIENTS), 2))
        } else {
            let h = rng.below(4000) as u32;
            if v6fam { v6(0x12, 0x245, h) } else { v4(10, 245, (h >> 8) as u8, h as u8) }
        };
        // Idle ages: mostly fresh, a tail of stale entries past Felix's timeouts.
        let age_s = match rng.below(100) {
            0..=59 => rng.below(30),
            60..=84 => rng.below(600),
            85..=94 => rng.below(3600),
            _ => 3600 + rng.below(4 * 3600),
        };
        let age_ns = age_s * 1_000_000_000 + rng.below(1_000_000_000);
        let last_seen = spec.now_ns.saturating_sub(age_ns).max(1);
        let lifetime = rng.below(7200) * 1_000_000_000;
        let created = last_seen.saturating_sub(lifetime).max(1);
        let (mut a, mut b) = (Leg::default(), Leg::default());
        a.ifindex = 2 + rng.below(30) as u32;
        b.ifindex = if rng.chance(0.3) { 0 } else { 2 + rng.below(30) as u32 };
        let pkts = 1 + (rng.next() % 1_000_000).pow(2) / 1_000_000_000;
        a.packets = pkts as u32;
        b.packets = (pkts * rng.below(3) / 2) as u32;
        a.bytes = pkts * (60 + rng.below(1400));
        b.bytes = b.packets as u64 * (60 + rng.below(1400));
        a.seqno = rng.next() as u32;
        b.seqno = rng.next() as u32;
        a.bits = LEG_OPENER | LEG_APPROVED | if rng.chance(0.5) { LEG_WORKLOAD } else { 0 };
        b.bits = LEG_APPROVED;
        let mut rst_seen = 0u64;
        if proto == 6 {
            match rng.below(100) {
                0..=69 => {
                    a.bits |= LEG_SYN | LEG_ACK;
                    b.bits |= LEG_SYN | LEG_ACK;
                }
                70..=79 => a.bits |= LEG_SYN,
                80..=91 => {
                    a.bits |= LEG_SYN | LEG_ACK | LEG_FIN;
                    b.bits |= LEG_SYN | LEG_ACK | LEG_FIN;
                }
                _ => {
                    a.bits |= LEG_SYN | LEG_ACK;
                    b.bits |= LEG_SYN | LEG_ACK | LEG_RST;
                    rst_seen = last_seen.saturating_sub(rng.below(10_000_000_000)).max(1);
                }
            }
        }
        let ts0 = if spec.layout.has_created() { created } else { rst_seen };
        // Node: pairs on ~11 % of connections make ~20 % of entries NAT.
        let nat_p = if node { 0.11 } else { 0.2 };
        let nat = proto != 1 && proto != 58 && sport != 0 && rng.chance(nat_p) && count + 2 <= n;
        let mut flags = 0u32;
        if rng.chance(0.05) {
            flags |= 0x08; // skip-fib
        }
        if nat {
            let vip = if node {
                // 2,000 services in 172.20.0.0/16
                let s = scatter(rng.below(2000), 3) & 0xffff;
                if v6fam { v6(0x96, 0, s) } else { v4(172, 20, (s >> 8) as u8, s as u8) }
            } else {
                let s = rng.below(200) as u32;
                if v6fam { v6(0x96, 0, s) } else { v4(10, 96, 0, s as u8) }
            };
            let (rev_key, rev_swapped) = enc.key(proto, &src, sport, &backend, dport);
            let svc_port = dport;
            let backend_port = if rng.chance(0.5) { dport } else { 8000 + rng.below(100) as u16 };
            let (rev_key, rev_swapped) = if backend_port != dport {
                enc.key(proto, &src, sport, &backend, backend_port)
            } else {
                (rev_key, rev_swapped)
            };
            let (fwd_key, fwd_swapped) = enc.key(proto, &src, sport, &vip, svc_port);
            // NAT_FWD: a stub pointing at the tracking (rev) entry.
            let mut fv = vec![0u8; vs];
            enc.header(&mut fv, ts0, last_seen, CT_TYPE_NAT_FWD, if fwd_swapped { FLAG_BA } else { 0 });
            fv[enc.v.nat_rev_key..enc.v.nat_rev_key + ks].copy_from_slice(&rev_key);
            // NAT_REV: legs ordered A→B as stored in the key.
            let mut rv = vec![0u8; vs];
            let rflags = flags | if rev_swapped { FLAG_BA } else { 0 };
            enc.header(&mut rv, ts0, last_seen, CT_TYPE_NAT_REV, rflags);
            let (la, lb) = if rev_swapped { (b, a) } else { (a, b) };
            enc.leg(&mut rv, enc.v.a_to_b, &la);
            enc.leg(&mut rv, enc.v.b_to_a, &lb);
            enc.addr(&mut rv, enc.v.orig_ip, &vip);
            rv[enc.v.orig_port..enc.v.orig_port + 2].copy_from_slice(&svc_port.to_le_bytes());
            keys.extend_from_slice(&fwd_key);
            vals.extend_from_slice(&fv);
            keys.extend_from_slice(&rev_key);
            vals.extend_from_slice(&rv);
            count += 2;
        } else {
            let dst = if node && rng.chance(0.15) {
                // Outside peers: 52.x.y.z and 203.x.y.z (up to 15 characters)
                let h = rng.next() as u32;
                if v6fam { v6(0x20, 0x1db8, h) } else { v4([52, 203][(h >> 31) as usize], (h >> 16) as u8, (h >> 8) as u8, h as u8) }
            } else if rng.chance(0.15) {
                // To the outside world.
                if v6fam { v6(0x20, 0x1db8, rng.below(1 << 20) as u32) } else { v4(203, 0, 113, rng.below(256) as u8) }
            } else {
                backend
            };
            if rng.chance(0.02) {
                flags |= 0x01; // nat-out
            }
            let (key, swapped) = enc.key(proto, &src, sport, &dst, dport);
            let mut v = vec![0u8; vs];
            enc.header(&mut v, ts0, last_seen, CT_TYPE_NORMAL, flags | if swapped { FLAG_BA } else { 0 });
            let (la, lb) = if swapped { (b, a) } else { (a, b) };
            enc.leg(&mut v, enc.v.a_to_b, &la);
            enc.leg(&mut v, enc.v.b_to_a, &lb);
            keys.extend_from_slice(&key);
            vals.extend_from_slice(&v);
            count += 1;
        }
    }
    Ok((keys, vals, count))
}

/// Calico's kernel map name for a layout and family (`cali_v4_ct4`).
pub fn calico_name(layout: Layout, family: Family) -> String {
    format!("cali_v{}_ct{}", family.number(), layout.version().unwrap_or(4))
}

/// Create a map shaped like Calico's for the layout, pin it, and fill it.
pub fn create_and_fill(pin: &Path, spec: &SynthSpec) -> Result<SynthReport> {
    let version = spec.layout.version().ok_or_else(|| CtError::BadArgument("synth needs a CT layout".into()))?;
    let exp = layout::expected_params(version, spec.family)
        .ok_or_else(|| CtError::BadArgument(format!("Calico has no IPv{} ct{version} map", spec.family.number())))?;
    if spec.entries > spec.max_entries as u64 {
        return Err(CtError::BadArgument(format!(
            "--entries {} exceeds --max-entries {}",
            spec.entries, spec.max_entries
        )));
    }
    if pin.exists() {
        return Err(CtError::BadArgument(format!("{}: already exists; synth never overwrites a pin", pin.display())));
    }
    let name = calico_name(spec.layout, spec.family);
    let params = CreateParams {
        map_type: exp.map_type,
        key_size: exp.key_size,
        value_size: exp.value_size,
        max_entries: spec.max_entries,
        map_flags: exp.map_flags,
        name: name.clone(),
    };
    let fd = sys::map_create(&params).map_err(|e| CtError::os("BPF_MAP_CREATE", e))?;
    let (keys, vals, n) = generate(spec)?;
    let written = write_entries(&fd, &keys, &vals, n, exp.key_size as usize, exp.value_size as usize)?;
    sys::obj_pin(fd.as_fd(), pin).map_err(|e| CtError::os(format!("{}: BPF_OBJ_PIN", pin.display()), e))?;
    Ok(SynthReport { written, map_type: exp.map_type, name })
}

/// Write entries with `BPF_MAP_UPDATE_BATCH`, falling back to one update per entry.
pub fn write_entries(fd: &OwnedFd, keys: &[u8], vals: &[u8], n: usize, ks: usize, vs: usize) -> Result<u64> {
    const STEP: usize = 8192;
    let mut done = 0usize;
    while done < n {
        let m = STEP.min(n - done);
        let (got, res) =
            sys::update_batch(fd.as_fd(), &keys[done * ks..(done + m) * ks], &vals[done * vs..(done + m) * vs], m as u32, BPF_ANY);
        match res {
            Ok(()) => done += m,
            Err(e) if matches!(e.raw_os_error(), Some(sys::ENOTSUPP) | Some(libc::EINVAL)) && got == 0 => {
                for i in done..n {
                    sys::update_elem(fd.as_fd(), &keys[i * ks..(i + 1) * ks], &vals[i * vs..(i + 1) * vs], BPF_ANY)
                        .map_err(|e| CtError::os("BPF_MAP_UPDATE_ELEM", e))?;
                }
                done = n;
            }
            Err(e) => return Err(CtError::os(format!("BPF_MAP_UPDATE_BATCH after {} entries", done + got as usize), e)),
        }
    }
    Ok(n as u64)
}
