//! A cheap hasher for the sampler's per-row maps keyed by integers (pid, `(pid, query_start)`,
//! leader start): the multiply-rotate mix rustc uses for its own tables (FxHash), in tree, no
//! dependency. SipHash, the std default, was about 10 % of a sample's instructions at 400
//! sessions (callgrind, BENCHMARKS.md "Issue 16").
//!
//! Invariant: only for keys the server or the kernel hands out (pids, timestamps), never for
//! text an outsider chooses: this hash has no protection against crafted collisions.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The mixing constant (2^64 / golden ratio, odd), as in rustc's FxHasher.
const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// The hasher; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct IntHasher {
    hash: u64,
}

impl IntHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_i32(&mut self, i: i32) {
        self.add(i as u32 as u64);
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_i64(&mut self, i: i64) {
        self.add(i as u64);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Builds [`IntHasher`]s.
pub type IntBuild = BuildHasherDefault<IntHasher>;

/// A `HashMap` with integer keys hashed by [`IntHasher`] (create with `IntMap::default()`).
pub type IntMap<K, V> = HashMap<K, V, IntBuild>;

/// A `HashSet` of integers hashed by [`IntHasher`].
pub type IntSet<K> = HashSet<K, IntBuild>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash_of(v: impl Hash) -> u64 {
        IntBuild::default().hash_one(v)
    }

    #[test]
    fn distinct_keys_hash_apart_and_maps_work() {
        assert_ne!(hash_of(1i32), hash_of(2i32));
        assert_ne!(hash_of((7i32, 1i64)), hash_of((1i32, 7i64)));
        assert_eq!(hash_of((7i32, 1i64)), hash_of((7i32, 1i64)));
        let mut m: IntMap<(i32, i64), u32> = IntMap::default();
        for pid in 0..5000 {
            m.insert((pid, i64::from(pid) * 1_000_003), pid as u32);
        }
        assert_eq!(m.len(), 5000);
        assert_eq!(m.get(&(4321, 4321 * 1_000_003)), Some(&4321));
        let mut bytes = IntHasher::default();
        bytes.write(b"0123456789");
        assert_ne!(bytes.finish(), 0);
    }
}
