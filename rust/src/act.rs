//! Acting on single entries (`get`, `delete`, `clean`, `flush`): Calico's ordered key, a
//! direct lookup that follows a NAT fwd entry to its rev entry, and the race-safe removal
//! loop, which mirrors Felix's BPF cleanup program (`conntrack_cleanup.c`):
//!
//! * an entry goes only if its last_seen is still the value the scan saw;
//! * a NAT pair goes together: the rev entry (it holds the state) by that rule, then the
//!   fwd entry, and the fwd only while it still points at that rev.
//!
//! Each removal is one `BPF_MAP_LOOKUP_AND_DELETE_ELEM`: the value that was really removed
//! comes back, so a refresh between the scan and the delete is seen, and the refreshed
//! value is put back with `BPF_NOEXIST` (an entry a program created meanwhile wins). The
//! entry is absent between those two calls (see README "Acting on the table").

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backup::Entries;
use crate::error::{CtError, Result};
use crate::layout::{Family, KeyOffsets, CT_TYPE_NAT_FWD, OFF_LAST_SEEN, OFF_TYPE};
use crate::sys::{self, BPF_NOEXIST};

/// Calico's `src_lt_dest`: the addresses compared word by word as the BPF program loads
/// them (network-order bytes read as native u32), then the ports.
pub fn src_lt_dst(src: &[u8], dst: &[u8], sport: u16, dport: u16) -> bool {
    for (a, b) in src.chunks_exact(4).zip(dst.chunks_exact(4)) {
        let x = u32::from_ne_bytes(a.try_into().unwrap());
        let y = u32::from_ne_bytes(b.try_into().unwrap());
        if x != y {
            return x < y;
        }
    }
    sport < dport
}

/// Key bytes with A = (`a`, `pa`) and B = (`b`, `pb`) as given.
pub fn key_bytes(family: Family, proto: u32, a: &[u8], pa: u16, b: &[u8], pb: u16) -> Result<Vec<u8>> {
    let k = KeyOffsets::new(family);
    if a.len() != k.addr_len || b.len() != k.addr_len {
        return Err(CtError::BadArgument(format!(
            "IPv{} key needs {}-byte addresses, got {} and {}",
            family.number(),
            k.addr_len,
            a.len(),
            b.len()
        )));
    }
    let mut key = vec![0u8; k.size];
    key[0..4].copy_from_slice(&proto.to_le_bytes());
    key[k.addr_a..k.addr_a + k.addr_len].copy_from_slice(a);
    key[k.addr_b..k.addr_b + k.addr_len].copy_from_slice(b);
    key[k.port_a..k.port_a + 2].copy_from_slice(&pa.to_le_bytes());
    key[k.port_b..k.port_b + 2].copy_from_slice(&pb.to_le_bytes());
    Ok(key)
}

/// The key Calico's datapath builds for a packet src:sport -> dst:dport (`fill_ct_key`).
pub fn ordered_key(family: Family, proto: u32, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Result<Vec<u8>> {
    if src_lt_dst(src, dst, sport, dport) {
        key_bytes(family, proto, src, sport, dst, dport)
    } else {
        key_bytes(family, proto, dst, dport, src, sport)
    }
}

fn last_seen(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[OFF_LAST_SEEN..OFF_LAST_SEEN + 8].try_into().unwrap())
}

/// The rev key a NAT fwd value points at (value offset 24 in every layout, facts §4).
const NAT_REV_KEY: usize = 24;

fn is_fwd(v: &[u8]) -> bool {
    v.len() > OFF_TYPE && v[OFF_TYPE] == CT_TYPE_NAT_FWD
}

fn rev_key_of(v: &[u8], ks: usize) -> Option<&[u8]> {
    v.get(NAT_REV_KEY..NAT_REV_KEY + ks)
}

/// One entry found by a direct lookup, and how it was reached.
pub struct Found {
    pub how: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Look each key up (`BPF_MAP_LOOKUP_ELEM` on the read-only fd); with `follow_nat`, a NAT
/// fwd entry found also brings its rev entry. Each entry is returned once.
pub fn lookup_follow(fd: BorrowedFd<'_>, keys: &[(Vec<u8>, String)], vs: usize, follow_nat: bool) -> Result<Vec<Found>> {
    let mut out: Vec<Found> = Vec::new();
    let mut value = vec![0u8; vs];
    let look = |key: &[u8], value: &mut [u8]| {
        sys::lookup_elem(fd, key, value).map_err(|e| CtError::os("BPF_MAP_LOOKUP_ELEM", e))
    };
    for (key, how) in keys {
        if out.iter().any(|f| &f.key == key) || !look(key, &mut value)? {
            continue;
        }
        out.push(Found { how: how.clone(), key: key.clone(), value: value.clone() });
        if follow_nat
            && is_fwd(&value)
            && let Some(rk) = rev_key_of(&value, key.len()).map(<[u8]>::to_vec)
            && !out.iter().any(|f| f.key == rk)
            && look(&rk, &mut value)?
        {
            out.push(Found { how: "nat_rev".into(), key: rk, value: value.clone() });
        }
    }
    Ok(out)
}

/// Indices of the entries of `e` whose key is one of `keys`.
pub fn find_keys(e: &Entries, keys: &[Vec<u8>]) -> Vec<u64> {
    let want: std::collections::HashSet<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    (0..e.count).filter(|&i| want.contains(e.key(i))).map(|i| i as u64).collect()
}

/// `selected` plus the other side of every NAT pair it touches: the rev entry a selected
/// fwd points at, and every fwd pointing at a selected rev. Returns the added indices.
pub fn nat_partners(e: &Entries, selected: &[u64]) -> Vec<u64> {
    let ks = e.key_size;
    let index: HashMap<&[u8], usize> = (0..e.count).map(|i| (e.key(i), i)).collect();
    let mut chosen = vec![false; e.count];
    for &i in selected {
        if (i as usize) < e.count {
            chosen[i as usize] = true;
        }
    }
    let mut added = Vec::new();
    for i in 0..e.count {
        let v = e.value(i);
        if !is_fwd(v) {
            continue;
        }
        let Some(&r) = rev_key_of(v, ks).and_then(|rk| index.get(rk)) else { continue };
        if r == i || is_fwd(e.value(r)) {
            continue;
        }
        if chosen[i] && !chosen[r] {
            chosen[r] = true;
            added.push(r as u64);
        } else if chosen[r] && !chosen[i] {
            chosen[i] = true;
            added.push(i as u64);
        }
    }
    added
}

/// What one removal pass did.
#[derive(Default)]
pub struct Removal {
    /// The values really removed (from the kernel's answer), with their keys.
    pub deleted: Entries,
    /// Entries whose last_seen had changed since the scan: put back (or a newer one won).
    pub refreshed: u64,
    /// NAT fwd entries kept because their rev entry was refreshed.
    pub fwd_kept_with_rev: u64,
    /// NAT fwd entries that no longer pointed at the rev entry removed with them: put back.
    pub repointed: u64,
    /// Already gone when we came to them (Felix or a program deleted them).
    pub gone: u64,
    /// NAT pairs removed together.
    pub pairs: u64,
    /// Refreshed values we took out but could not put back (map full): lost.
    pub reinsert_failed: u64,
    /// Put back refused with EEXIST: a program created a newer entry meanwhile, which won.
    pub newer_won: u64,
    /// Kernel without BPF_MAP_LOOKUP_AND_DELETE_ELEM on this map: lookup + compare + delete.
    pub fallback: bool,
}

enum Taken {
    Deleted(Vec<u8>),
    /// Removed, but not as scanned: its value is returned for the caller to put back.
    Changed(Vec<u8>),
    Gone,
}

struct Remover<'a> {
    fd: BorrowedFd<'a>,
    vs: usize,
    fallback: bool,
    /// Deletions by all workers (for the crash hook).
    deletions: &'a AtomicU64,
    crash_after: Option<u64>,
}

impl Remover<'_> {
    /// Remove `key` if `unchanged(value)` holds for the value it holds now.
    fn take(&mut self, key: &[u8], unchanged: impl Fn(&[u8]) -> bool) -> Result<Taken> {
        let mut value = vec![0u8; self.vs];
        if !self.fallback {
            match sys::lookup_and_delete_elem(self.fd, key, &mut value) {
                Ok(false) => return Ok(Taken::Gone),
                Ok(true) => {
                    self.counted();
                    return Ok(if unchanged(&value) { Taken::Deleted(value) } else { Taken::Changed(value) });
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(sys::ENOTSUPP) | Some(libc::EOPNOTSUPP)) => {
                    self.fallback = true;
                }
                Err(e) => return Err(CtError::os("BPF_MAP_LOOKUP_AND_DELETE_ELEM", e)),
            }
        }
        // Fallback: a refresh between this lookup and the delete is lost (the entry goes).
        if !sys::lookup_elem(self.fd, key, &mut value).map_err(|e| CtError::os("BPF_MAP_LOOKUP_ELEM", e))? {
            return Ok(Taken::Gone);
        }
        if !unchanged(&value) {
            return Ok(Taken::Changed(Vec::new())); // never removed: nothing to put back
        }
        if !sys::delete_elem(self.fd, key).map_err(|e| CtError::os("BPF_MAP_DELETE_ELEM", e))? {
            return Ok(Taken::Gone);
        }
        self.counted();
        Ok(Taken::Deleted(value))
    }

    fn counted(&mut self) {
        let n = self.deletions.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_after == Some(n) {
            // Test hook (CTSCOPE_TEST_CRASH_AFTER=delete:N): die as an OOM kill would.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }

    /// Put back a value taken out by mistake; an entry created meanwhile wins.
    fn put_back(&self, key: &[u8], value: &[u8], r: &mut Removal) -> Result<()> {
        if value.is_empty() {
            return Ok(());
        }
        match sys::update_elem(self.fd, key, value, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                r.newer_won += 1;
                Ok(())
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOMEM)) => {
                r.reinsert_failed += 1;
                Ok(())
            }
            Err(e) => Err(CtError::os("BPF_MAP_UPDATE_ELEM (putting a refreshed entry back)", e)),
        }
    }
}

/// One removal: a NAT rev entry with the fwd entries pointing at it, or a single entry.
enum Unit {
    Pair(usize, Vec<usize>),
    Single(usize),
}

/// Options of a removal pass.
#[derive(Clone, Copy, Default)]
pub struct RemoveOptions {
    /// The values are Calico CT values (last_seen at offset 8, NAT pairs); otherwise an
    /// entry goes only if its whole value is unchanged.
    pub ct: bool,
    /// Test hook: SIGKILL after this many deletions.
    pub crash_after: Option<u64>,
    /// Test hook: behave as on a kernel without BPF_MAP_LOOKUP_AND_DELETE_ELEM.
    pub force_fallback: bool,
    /// Worker threads (each key is removed by one syscall; pairs stay in one worker).
    pub threads: usize,
}

/// Remove the candidates (`cand`: keys and values as the scan saw them) by Felix's rule.
pub fn remove_if_unchanged(fd: BorrowedFd<'_>, cand: &Entries, opt: RemoveOptions) -> Result<Removal> {
    let ks = cand.key_size;
    let ct = opt.ct && cand.value_size >= NAT_REV_KEY + ks;
    let mut units = Vec::with_capacity(cand.count);
    let mut in_pair = vec![false; cand.count];
    if ct {
        // NAT pairs among the candidates: rev index -> fwd indices.
        let index: HashMap<&[u8], usize> = (0..cand.count).map(|i| (cand.key(i), i)).collect();
        let mut fwds_of: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..cand.count {
            let v = cand.value(i);
            if let Some(&j) = is_fwd(v).then(|| rev_key_of(v, ks)).flatten().and_then(|rk| index.get(rk))
                && j != i
                && !is_fwd(cand.value(j))
            {
                fwds_of.entry(j).or_default().push(i);
            }
        }
        let mut revs: Vec<(usize, Vec<usize>)> = fwds_of.into_iter().collect();
        revs.sort_unstable_by_key(|(j, _)| *j);
        for (j, fwds) in revs {
            in_pair[j] = true;
            for &f in &fwds {
                in_pair[f] = true;
            }
            units.push(Unit::Pair(j, fwds));
        }
    }
    units.extend((0..cand.count).filter(|&i| !in_pair[i]).map(Unit::Single));
    let deletions = AtomicU64::new(0);
    let threads = opt.threads.clamp(1, 16).min(units.len() / 20_000 + 1);
    let per = units.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<Result<Removal>> = if threads <= 1 {
        vec![run_units(fd, cand, ct, &units, &deletions, opt)]
    } else {
        std::thread::scope(|sc| {
            let handles: Vec<_> = units
                .chunks(per)
                .map(|chunk| {
                    let d = &deletions;
                    sc.spawn(move || run_units(fd, cand, ct, chunk, d, opt))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(CtError::BadArgument("removal worker panicked".into())))).collect()
        })
    };
    let mut r = Removal { deleted: Entries::new(ks, cand.value_size), ..Default::default() };
    for p in parts {
        let p = p?;
        r.deleted.keys.extend_from_slice(&p.deleted.keys);
        r.deleted.values.extend_from_slice(&p.deleted.values);
        r.deleted.count += p.deleted.count;
        r.refreshed += p.refreshed;
        r.fwd_kept_with_rev += p.fwd_kept_with_rev;
        r.repointed += p.repointed;
        r.gone += p.gone;
        r.pairs += p.pairs;
        r.reinsert_failed += p.reinsert_failed;
        r.newer_won += p.newer_won;
        r.fallback |= p.fallback;
    }
    Ok(r)
}

fn run_units(fd: BorrowedFd<'_>, cand: &Entries, ct: bool, units: &[Unit], deletions: &AtomicU64, opt: RemoveOptions) -> Result<Removal> {
    let (ks, vs) = (cand.key_size, cand.value_size);
    let mut rm = Remover { fd, vs, fallback: opt.force_fallback, deletions, crash_after: opt.crash_after };
    let mut r = Removal { deleted: Entries::new(ks, vs), ..Default::default() };
    for unit in units {
        match unit {
            Unit::Pair(j, fwds) => {
                let rev_key = cand.key(*j);
                let seen = last_seen(cand.value(*j));
                match rm.take(rev_key, |v| last_seen(v) == seen)? {
                    Taken::Gone => r.gone += 1,
                    Taken::Changed(v) => {
                        // The connection is alive: rev back, its fwd entries never touched.
                        r.refreshed += 1;
                        r.fwd_kept_with_rev += fwds.len() as u64;
                        rm.put_back(rev_key, &v, &mut r)?;
                        continue;
                    }
                    Taken::Deleted(v) => r.deleted.push(rev_key, &v),
                }
                for &f in fwds {
                    let fkey = cand.key(f);
                    match rm.take(fkey, |v| rev_key_of(v, ks) == Some(rev_key))? {
                        Taken::Gone => r.gone += 1,
                        Taken::Changed(v) => {
                            r.repointed += 1;
                            rm.put_back(fkey, &v, &mut r)?;
                        }
                        Taken::Deleted(v) => {
                            r.deleted.push(fkey, &v);
                            r.pairs += 1;
                        }
                    }
                }
            }
            Unit::Single(i) => {
                let (key, scanned) = (cand.key(*i), cand.value(*i));
                let taken = if ct {
                    let seen = last_seen(scanned);
                    rm.take(key, |v| last_seen(v) == seen)?
                } else {
                    rm.take(key, |v| v == scanned)?
                };
                match taken {
                    Taken::Gone => r.gone += 1,
                    Taken::Changed(v) => {
                        r.refreshed += 1;
                        rm.put_back(key, &v, &mut r)?;
                    }
                    Taken::Deleted(v) => r.deleted.push(key, &v),
                }
            }
        }
    }
    r.fallback = rm.fallback;
    Ok(r)
}

/// Write entries with `BPF_NOEXIST` one by one: (written, already present).
pub fn insert_new(fd: BorrowedFd<'_>, e: &Entries) -> Result<(u64, u64)> {
    let (mut written, mut existed) = (0, 0);
    for i in 0..e.count {
        match sys::update_elem(fd, e.key(i), e.value(i), BPF_NOEXIST) {
            Ok(()) => written += 1,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => existed += 1,
            Err(err) => {
                return Err(CtError::os(format!("BPF_MAP_UPDATE_ELEM (BPF_NOEXIST) after {written} entries"), err));
            }
        }
    }
    Ok((written, existed))
}

/// The benchmark floor: `BPF_MAP_DELETE_BATCH` of all keys of `e`, no checks.
pub fn delete_batch_all(fd: BorrowedFd<'_>, e: &Entries) -> Result<u64> {
    const STEP: usize = 65536;
    let mut done = 0usize;
    while done < e.count {
        let m = STEP.min(e.count - done);
        let (got, res) = sys::delete_batch(fd, &e.keys[done * e.key_size..(done + m) * e.key_size], m as u32);
        match res {
            Ok(()) => done += m,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => done += got as usize + 1,
            Err(err) => return Err(CtError::os("BPF_MAP_DELETE_BATCH", err)),
        }
    }
    Ok(e.count as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_keys_as_calico() {
        // 10.0.0.2 vs 10.0.0.1: as native (LE) u32 the last byte is most significant.
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        let k = ordered_key(Family::V4, 6, &b, 80, &a, 1234).unwrap();
        assert_eq!(&k[4..8], &a);
        assert_eq!(u16::from_le_bytes([k[12], k[13]]), 1234);
        // 1.0.0.2 vs 2.0.0.1 on LE: 0x02000001 < 0x01000002 is false, so B first.
        let x = [1, 0, 0, 2];
        let y = [2, 0, 0, 1];
        let k = ordered_key(Family::V4, 17, &x, 1, &y, 2).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(&k[4..8], &y);
        }
        // Same address: ports decide.
        let k = ordered_key(Family::V4, 6, &a, 9, &a, 3).unwrap();
        assert_eq!(u16::from_le_bytes([k[12], k[13]]), 3);
        assert!(key_bytes(Family::V6, 6, &a, 1, &b, 2).is_err());
    }

    #[test]
    fn finds_nat_partners() {
        let mut e = Entries::new(16, 88);
        let rev = [7u8; 16];
        let mut fv = vec![0u8; 88];
        fv[OFF_TYPE] = CT_TYPE_NAT_FWD;
        fv[24..40].copy_from_slice(&rev);
        e.push(&[1u8; 16], &fv);
        let mut rv = vec![0u8; 88];
        rv[OFF_TYPE] = 2;
        e.push(&rev, &rv);
        e.push(&[3u8; 16], &[0u8; 88]);
        assert_eq!(nat_partners(&e, &[0]), vec![1]);
        assert_eq!(nat_partners(&e, &[1]), vec![0]);
        assert!(nat_partners(&e, &[2]).is_empty());
        assert_eq!(find_keys(&e, &[rev.to_vec()]), vec![1]);
    }
}
