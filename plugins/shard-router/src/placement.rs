//! Placement: which shard owns a key. Pure Rust on `std` only, with no Wasm
//! imports, so that the gateway's end-to-end suite compiles this very file
//! natively (`tests/e2e/shard.rs`) and runs the unit and statistical tests in
//! CI's `cargo test --workspace`.
//!
//! * [`key_hash`] / [`xxh64`]: XXH64 of the key, the only per-request hash.
//! * [`Maglev`]: Maglev lookup table (Eisenbud et al., NSDI 2016) with
//!   Envoy-style weights, built once; a lookup is one table read, and the
//!   key's *preference walk* (a second hash gives a stride through the prime
//!   table) yields the next shards in a stable per-key order without
//!   rebuilding the table when shards are skipped.
//! * [`Rendezvous`]: weighted highest-random-weight hashing,
//!   `score = weight / -ln(u)` with `u` uniform in (0, 1) from the key and
//!   the shard id; the next ranks are the fallbacks.
//! * [`Ranges`]: ordered key ranges `[from, to)` for range sharding.
//! * [`capacity`]: the bound of consistent hashing with bounded loads.
//!
//! Every shard is identified by its `id` string: hashing never depends on the
//! order in which shards are listed (Maglev fills its table in id order), so
//! reordering a config moves no key. The arithmetic is integer or plain IEEE
//! `f64` (`+ - * /` only, with a hand-written [`ln`]), so a Wasm build and a
//! native build place every key identically.

use std::cmp::Ordering;
use std::fmt;

/// Default Maglev table size (a prime; Maglev needs a prime size, and at
/// least ~100 entries per shard for an even spread).
pub(crate) const DEFAULT_TABLE_SIZE: u64 = 65_537;

/// Largest accepted Maglev table size (a prime; 2 bytes per entry). The
/// table is built in `configure`, within the plugin's call deadline
/// (`timeout_ms`, default 100 ms): 262147 entries take about 15 ms natively,
/// 1000003 about 60–90 ms, too close to the default deadline.
pub(crate) const MAX_TABLE_SIZE: u64 = 262_147;

/// Largest number of shards (table entries are `u16` shard numbers).
pub(crate) const MAX_SHARDS: usize = 10_000;

/// Seed of the key hash.
const KEY_SEED: u64 = 0x5348_4152_445f_4b45; // "SHARD_KE"
/// Seeds of a shard's Maglev permutation (offset, skip).
const OFFSET_SEED: u64 = 0x4d41_474c_4556_5f4f; // "MAGLEV_O"
const SKIP_SEED: u64 = 0x4d41_474c_4556_5f53; // "MAGLEV_S"
/// Seed of a shard's rendezvous hash.
const RENDEZVOUS_SEED: u64 = 0x5245_4e44_455a_564f; // "RENDEZVO"

// ---------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn read64(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn read32(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&data[at..at + 4]);
    u64::from(u32::from_le_bytes(bytes))
}

fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn xxh_merge(acc: u64, val: u64) -> u64 {
    (acc ^ xxh_round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 (the hash Envoy's hash policies use), little-endian, seeded.
pub(crate) fn xxh64(data: &[u8], seed: u64) -> u64 {
    let len = data.len();
    let mut i = 0;
    let mut h = if len >= 32 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        while i + 32 <= len {
            v1 = xxh_round(v1, read64(data, i));
            v2 = xxh_round(v2, read64(data, i + 8));
            v3 = xxh_round(v3, read64(data, i + 16));
            v4 = xxh_round(v4, read64(data, i + 24));
            i += 32;
        }
        let mut h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        xxh_merge(h, v4)
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len as u64);
    while i + 8 <= len {
        h ^= xxh_round(0, read64(data, i));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        i += 8;
    }
    if i + 4 <= len {
        h ^= read32(data, i).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        i += 4;
    }
    while i < len {
        h ^= u64::from(data[i]).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
        i += 1;
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// The splitmix64 finaliser: a bijective 64-bit mix.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The hash of a shard key: computed once per request.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxh64(key, KEY_SEED)
}

/// Natural logarithm of a positive, finite, normal `x`, from `+ - * /` only
/// (so that it gives the same bits on every platform, unlike a libm call).
/// Relative error below 1e-15 (`x = m * 2^e`, `m` in [√½, √2), then the
/// `atanh` series of `ln m`).
pub(crate) fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        exponent += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // ln m = 2 (s + s^3/3 + s^5/5 + ...), |s| <= 0.1716: eleven terms.
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0
                    + s2 * (1.0 / 9.0
                        + s2 * (1.0 / 11.0
                            + s2 * (1.0 / 13.0
                                + s2 * (1.0 / 15.0
                                    + s2 * (1.0 / 17.0
                                        + s2 * (1.0 / 19.0 + s2 * (1.0 / 21.0))))))))));
    let sum = s * series;
    2.0 * sum + exponent as f64 * std::f64::consts::LN_2
}

/// A hash as a uniform number in the open interval (0, 1).
fn unit(h: u64) -> f64 {
    // 52 bits, so that `k + 0.5` and the product are exact: in [2^-53, 1 - 2^-53].
    ((h >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// Whether `n` is prime (trial division; `n` is at most a few million here).
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

// ---------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------

/// Why a placement could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildError {
    /// No shard at all.
    NoShards,
    /// More than [`MAX_SHARDS`] shards.
    TooManyShards(usize),
    /// Two shards with this id (indices of both).
    DuplicateId(usize, usize),
    /// An empty id (index).
    EmptyId(usize),
    /// Every weight is zero.
    ZeroWeights,
    /// The table size is not prime.
    NotPrime(u64),
    /// The table size is smaller than the number of weighted shards.
    TableTooSmall { size: u64, shards: usize },
    /// The table size exceeds [`MAX_TABLE_SIZE`].
    TableTooLarge(u64),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoShards => write!(f, "at least one shard is required"),
            BuildError::TooManyShards(n) => {
                write!(f, "{n} shards; at most {MAX_SHARDS} are supported")
            }
            BuildError::DuplicateId(a, b) => {
                write!(f, "shards[{b}] has the same id as shards[{a}]")
            }
            BuildError::EmptyId(i) => write!(f, "shards[{i}] has an empty id"),
            BuildError::ZeroWeights => write!(f, "the shard weights sum to zero"),
            BuildError::NotPrime(n) => write!(
                f,
                "{n} is not prime (Maglev needs a prime table size, e.g. 65537, 131071, 262147)"
            ),
            BuildError::TableTooSmall { size, shards } => write!(
                f,
                "{size} is smaller than the number of weighted shards ({shards}); use at least \
                 100 entries per shard"
            ),
            BuildError::TableTooLarge(n) => {
                write!(
                    f,
                    "{n} is larger than the maximum {MAX_TABLE_SIZE} (the table is built in \
                     `configure`, within the plugin's call deadline)"
                )
            }
        }
    }
}

/// Checks shared by both algorithms: count, ids, weights. Returns the
/// indices of the weighted shards sorted by id.
fn weighted_by_id(shards: &[(&str, u32)]) -> Result<Vec<usize>, BuildError> {
    if shards.is_empty() {
        return Err(BuildError::NoShards);
    }
    if shards.len() > MAX_SHARDS {
        return Err(BuildError::TooManyShards(shards.len()));
    }
    if let Some(i) = shards.iter().position(|(id, _)| id.is_empty()) {
        return Err(BuildError::EmptyId(i));
    }
    let mut by_id: Vec<usize> = (0..shards.len()).collect();
    by_id.sort_by(|&a, &b| shards[a].0.cmp(shards[b].0).then(a.cmp(&b)));
    for pair in by_id.windows(2) {
        if shards[pair[0]].0 == shards[pair[1]].0 {
            return Err(BuildError::DuplicateId(pair[0], pair[1]));
        }
    }
    by_id.retain(|&i| shards[i].1 > 0);
    if by_id.is_empty() {
        return Err(BuildError::ZeroWeights);
    }
    Ok(by_id)
}

// ---------------------------------------------------------------------------
// Maglev
// ---------------------------------------------------------------------------

/// A Maglev lookup table over weighted shards.
#[derive(Debug, Clone)]
pub(crate) struct Maglev {
    /// Table entry -> slot in `shards`.
    table: Vec<u16>,
    /// Slot -> the caller's shard index (weighted shards, in id order).
    shards: Vec<usize>,
}

impl Maglev {
    /// Build the table for `shards` (`(id, weight)`; weight 0 shards get no
    /// entry). `table_size` must be a prime no smaller than the number of
    /// weighted shards. Cost: O(M log M) for table size M.
    pub(crate) fn new(shards: &[(&str, u32)], table_size: u64) -> Result<Maglev, BuildError> {
        let weighted = weighted_by_id(shards)?;
        if table_size > MAX_TABLE_SIZE {
            return Err(BuildError::TableTooLarge(table_size));
        }
        if !is_prime(table_size) {
            return Err(BuildError::NotPrime(table_size));
        }
        if table_size < weighted.len() as u64 {
            return Err(BuildError::TableTooSmall {
                size: table_size,
                shards: weighted.len(),
            });
        }
        let m = table_size;
        /// A shard's walk through its permutation `offset + j * skip (mod M)`.
        struct Fill {
            position: u64,
            skip: u64,
            weight: u64,
            target: u64,
        }
        let mut fills: Vec<Fill> = weighted
            .iter()
            .map(|&i| {
                let id = shards[i].0.as_bytes();
                Fill {
                    position: xxh64(id, OFFSET_SEED) % m,
                    skip: xxh64(id, SKIP_SEED) % (m - 1).max(1) + 1,
                    weight: u64::from(shards[i].1),
                    target: 0,
                }
            })
            .collect();
        let max_weight = fills.iter().map(|f| f.weight).max().unwrap_or(1);
        const EMPTY: u16 = u16::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut filled: u64 = 0;
        let mut iteration: u64 = 1;
        // Envoy's weighted fill: a shard of the largest weight claims an entry
        // every round, one of a third of it every third round. Every shard
        // claims in the first round, so each gets at least one entry.
        while filled < m {
            for (slot, fill) in fills.iter_mut().enumerate() {
                if filled == m {
                    break;
                }
                if iteration * fill.weight < fill.target {
                    continue;
                }
                fill.target += max_weight;
                // The next free entry of the shard's permutation (there is
                // one: the table is not full, and the permutation visits
                // every entry since M is prime).
                while table[fill.position as usize] != EMPTY {
                    fill.position += fill.skip;
                    if fill.position >= m {
                        fill.position -= m;
                    }
                }
                table[fill.position as usize] = slot as u16;
                filled += 1;
            }
            iteration += 1;
        }
        Ok(Maglev {
            table,
            shards: weighted,
        })
    }

    /// The table size M.
    pub(crate) fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The shard owning a key: one table read.
    pub(crate) fn lookup(&self, key_hash: u64) -> usize {
        let m = self.table.len() as u64;
        self.shards[self.table[(key_hash % m) as usize] as usize]
    }

    /// The key's preference order: its shard, then every other weighted
    /// shard once, in the order met walking the table from the key's entry
    /// with a per-key stride (M is prime, so the walk visits every entry).
    /// A skipped shard's keys are spread over the others by weight, and no
    /// other key moves.
    pub(crate) fn walk(&self, key_hash: u64) -> MaglevWalk<'_> {
        let m = self.table.len() as u64;
        MaglevWalk {
            maglev: self,
            position: key_hash % m,
            stride: if m > 1 {
                mix64(key_hash) % (m - 1) + 1
            } else {
                1
            },
            probes: 0,
            seen: vec![0u64; self.shards.len().div_ceil(64)],
            remaining: self.shards.len(),
        }
    }

    /// Table entries held by each of the caller's shards.
    pub(crate) fn entries(&self, shard_count: usize) -> Vec<usize> {
        let mut counts = vec![0usize; shard_count];
        for &slot in &self.table {
            counts[self.shards[slot as usize]] += 1;
        }
        counts
    }
}

/// See [`Maglev::walk`].
#[derive(Debug)]
pub(crate) struct MaglevWalk<'a> {
    maglev: &'a Maglev,
    position: u64,
    stride: u64,
    probes: u64,
    seen: Vec<u64>,
    remaining: usize,
}

impl Iterator for MaglevWalk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let m = self.maglev.table.len() as u64;
        while self.remaining > 0 && self.probes < m {
            let slot = self.maglev.table[self.position as usize] as usize;
            self.position = (self.position + self.stride) % m;
            self.probes += 1;
            let (word, bit) = (slot / 64, 1u64 << (slot % 64));
            if self.seen[word] & bit == 0 {
                self.seen[word] |= bit;
                self.remaining -= 1;
                return Some(self.maglev.shards[slot]);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------
// Rendezvous
// ---------------------------------------------------------------------------

/// Weighted rendezvous (highest random weight) hashing.
#[derive(Debug, Clone)]
pub(crate) struct Rendezvous {
    /// (hash of the id, weight, caller's index), weighted shards in id order.
    shards: Vec<(u64, f64, usize)>,
}

impl Rendezvous {
    /// Prepare rendezvous hashing over `shards` (`(id, weight)`; weight 0
    /// shards never win).
    pub(crate) fn new(shards: &[(&str, u32)]) -> Result<Rendezvous, BuildError> {
        let weighted = weighted_by_id(shards)?;
        Ok(Rendezvous {
            shards: weighted
                .into_iter()
                .map(|i| {
                    (
                        xxh64(shards[i].0.as_bytes(), RENDEZVOUS_SEED),
                        f64::from(shards[i].1),
                        i,
                    )
                })
                .collect(),
        })
    }

    /// `weight / -ln(u)`: the shard with the highest score owns the key, and
    /// a shard of weight `w` wins a share `w / Σw` of the keys.
    fn score(key_hash: u64, id_hash: u64, weight: f64) -> f64 {
        weight / -ln(unit(mix64(key_hash ^ id_hash)))
    }

    /// The shard owning a key: one score per shard.
    pub(crate) fn lookup(&self, key_hash: u64) -> usize {
        let mut best = (f64::NEG_INFINITY, 0usize);
        for &(id_hash, weight, index) in &self.shards {
            let score = Rendezvous::score(key_hash, id_hash, weight);
            if score > best.0 {
                best = (score, index);
            }
        }
        best.1
    }

    /// Every weighted shard, best score first (ties, practically impossible,
    /// keep id order).
    pub(crate) fn ranking(&self, key_hash: u64) -> Vec<usize> {
        let mut scored: Vec<(f64, usize)> = self
            .shards
            .iter()
            .map(|&(id_hash, weight, index)| (Rendezvous::score(key_hash, id_hash, weight), index))
            .collect();
        scored.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal));
        scored.into_iter().map(|(_, index)| index).collect()
    }
}

// ---------------------------------------------------------------------------
// Either
// ---------------------------------------------------------------------------

/// The hashing algorithm of a shard set.
#[derive(Debug, Clone)]
pub(crate) enum Hashing {
    Maglev(Maglev),
    Rendezvous(Rendezvous),
}

impl Hashing {
    /// The shard owning the key.
    pub(crate) fn lookup(&self, key_hash: u64) -> usize {
        match self {
            Hashing::Maglev(m) => m.lookup(key_hash),
            Hashing::Rendezvous(r) => r.lookup(key_hash),
        }
    }

    /// The key's full preference order (its shard first).
    pub(crate) fn preference(&self, key_hash: u64) -> Vec<usize> {
        match self {
            Hashing::Maglev(m) => m.walk(key_hash).collect(),
            Hashing::Rendezvous(r) => r.ranking(key_hash),
        }
    }

    /// The first shard in the key's preference order that `accept`s, asking
    /// about each shard at most once. The common case (the owner accepts)
    /// costs one lookup and no allocation.
    pub(crate) fn choose(
        &self,
        key_hash: u64,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let first = self.lookup(key_hash);
        if accept(first) {
            return Some(first);
        }
        match self {
            Hashing::Maglev(m) => m.walk(key_hash).skip(1).find(|&s| accept(s)),
            Hashing::Rendezvous(r) => r.ranking(key_hash).into_iter().skip(1).find(|&s| accept(s)),
        }
    }
}

// ---------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------

/// A key range `[from, to)` owned by a shard; a missing bound is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) shard: usize,
}

/// Non-overlapping key ranges, compared bytewise (UTF-8 order).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ranges {
    /// Sorted by `from`.
    ranges: Vec<KeyRange>,
}

impl Ranges {
    /// Check and sort ranges. `Err((i, message))` names the offending input
    /// index: an empty range (`from >= to`) or one overlapping another.
    pub(crate) fn new(ranges: Vec<KeyRange>) -> Result<Ranges, (usize, String)> {
        for (i, r) in ranges.iter().enumerate() {
            if let (Some(from), Some(to)) = (&r.from, &r.to) {
                if from >= to {
                    return Err((
                        i,
                        format!("empty range: `from` {from:?} is not below `to` {to:?}"),
                    ));
                }
            }
        }
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        // `None` (open start) sorts first.
        order.sort_by(|&a, &b| ranges[a].from.cmp(&ranges[b].from));
        for pair in order.windows(2) {
            let (a, b) = (&ranges[pair[0]], &ranges[pair[1]]);
            let overlaps = match &a.to {
                None => true,
                Some(to) => b.from.as_ref().is_none_or(|from| from < to),
            };
            if overlaps {
                let (first, second) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
                return Err((second, format!("overlaps ranges[{first}]")));
            }
        }
        let mut sorted = Vec::with_capacity(ranges.len());
        let mut slots: Vec<Option<KeyRange>> = ranges.into_iter().map(Some).collect();
        for i in order {
            if let Some(r) = slots[i].take() {
                sorted.push(r);
            }
        }
        Ok(Ranges { ranges: sorted })
    }

    /// The ranges, sorted by `from`.
    pub(crate) fn as_slice(&self) -> &[KeyRange] {
        &self.ranges
    }

    /// The shard whose range holds `key`: a binary search.
    pub(crate) fn find(&self, key: &str) -> Option<usize> {
        let after = self
            .ranges
            .partition_point(|r| r.from.as_deref().is_none_or(|from| from <= key));
        let r = self.ranges.get(after.checked_sub(1)?)?;
        match &r.to {
            Some(to) if key >= to.as_str() => None,
            _ => Some(r.shard),
        }
    }
}

// ---------------------------------------------------------------------------
// Bounded load
// ---------------------------------------------------------------------------

/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
/// 2018), weighted: a shard of weight `w` may take a new request while its
/// load is below `ceil(factor * (total + 1) * w / weight_sum)`, where `total`
/// is the current load of all shards. With `factor >= 1` the capacities sum
/// to more than `total`, so some shard always has room.
pub(crate) fn capacity(total: u64, factor: f64, weight: u32, weight_sum: u64) -> u64 {
    if weight_sum == 0 {
        return u64::MAX;
    }
    let bound = factor * (total + 1) as f64 * f64::from(weight) / weight_sum as f64;
    let bound = bound.ceil();
    if bound >= u64::MAX as f64 {
        u64::MAX
    } else {
        (bound as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    fn equal(ids: &[String]) -> Vec<(&str, u32)> {
        ids.iter().map(|id| (id.as_str(), 1)).collect()
    }

    #[test]
    fn xxh64_known_answers() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    #[test]
    fn primes() {
        let small: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_536));
        assert!(!is_prime(65_539 * 3));
        assert!(is_prime(MAX_TABLE_SIZE));
        assert!(is_prime(DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn ln_matches_std() {
        let mut x = 1e-17;
        while x < 1e6 {
            let (ours, std) = (ln(x), x.ln());
            assert!(
                (ours - std).abs() <= 1e-14 * std.abs().max(1.0),
                "ln({x}) = {ours}, std says {std}"
            );
            x *= 1.37;
        }
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn unit_is_open() {
        assert!(unit(0) > 0.0);
        assert!(unit(u64::MAX) < 1.0);
    }

    #[test]
    fn build_errors() {
        let shards = ids(3);
        assert_eq!(Maglev::new(&[], 7).unwrap_err(), BuildError::NoShards);
        assert_eq!(
            Maglev::new(&equal(&shards), 65_536).unwrap_err(),
            BuildError::NotPrime(65_536)
        );
        assert_eq!(
            Maglev::new(&equal(&shards), 2).unwrap_err(),
            BuildError::TableTooSmall { size: 2, shards: 3 }
        );
        assert_eq!(
            Maglev::new(&equal(&shards), 1_000_003).unwrap_err(),
            BuildError::TableTooLarge(1_000_003)
        );
        assert_eq!(
            Rendezvous::new(&[("a", 1), ("b", 1), ("a", 2)]).unwrap_err(),
            BuildError::DuplicateId(0, 2)
        );
        assert_eq!(
            Rendezvous::new(&[("a", 0), ("b", 0)]).unwrap_err(),
            BuildError::ZeroWeights
        );
        assert_eq!(
            Rendezvous::new(&[("a", 1), ("", 1)]).unwrap_err(),
            BuildError::EmptyId(1)
        );
        assert!(BuildError::NotPrime(10).to_string().contains("not prime"));
    }

    #[test]
    fn maglev_small_table_is_full_and_fair() {
        let shards = ids(3);
        let m = Maglev::new(&equal(&shards), 7).unwrap();
        assert_eq!(m.table_size(), 7);
        let entries = m.entries(3);
        assert_eq!(entries.iter().sum::<usize>(), 7);
        assert!(entries.iter().all(|&e| (2..=3).contains(&e)), "{entries:?}");
    }

    #[test]
    fn zero_weight_shards_own_nothing() {
        let shards = [("a", 1), ("b", 0), ("c", 1)];
        let m = Maglev::new(&shards, 101).unwrap();
        assert_eq!(m.entries(3)[1], 0);
        let r = Rendezvous::new(&shards).unwrap();
        for k in 0..1000u64 {
            let h = mix64(k);
            assert_ne!(m.lookup(h), 1);
            assert_ne!(r.lookup(h), 1);
            assert!(!m.walk(h).any(|s| s == 1));
            assert!(!r.ranking(h).contains(&1));
        }
    }

    #[test]
    fn walks_visit_every_weighted_shard_once_owner_first() {
        let shards = ids(7);
        let maglev = Hashing::Maglev(Maglev::new(&equal(&shards), 1009).unwrap());
        let rendezvous = Hashing::Rendezvous(Rendezvous::new(&equal(&shards)).unwrap());
        for hashing in [maglev, rendezvous] {
            for k in 0..200u64 {
                let h = key_hash(&k.to_le_bytes());
                let order = hashing.preference(h);
                assert_eq!(order[0], hashing.lookup(h));
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..7).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn choose_asks_each_shard_once_and_follows_the_preference() {
        let shards = ids(5);
        let hashing = Hashing::Maglev(Maglev::new(&equal(&shards), 101).unwrap());
        let h = key_hash(b"user-1");
        let order = hashing.preference(h);
        let mut asked = Vec::new();
        let chosen = hashing.choose(h, |s| {
            asked.push(s);
            s == order[3]
        });
        assert_eq!(chosen, Some(order[3]));
        assert_eq!(asked, order[..4]);
        assert_eq!(hashing.choose(h, |_| false), None);
    }

    #[test]
    fn listing_order_does_not_matter() {
        let shards = ids(6);
        let forward = equal(&shards);
        let mut backward = forward.clone();
        backward.reverse();
        let back = |i: usize| 5 - i;
        let (mf, mb) = (
            Maglev::new(&forward, 1009).unwrap(),
            Maglev::new(&backward, 1009).unwrap(),
        );
        let (rf, rb) = (
            Rendezvous::new(&forward).unwrap(),
            Rendezvous::new(&backward).unwrap(),
        );
        for k in 0..500u64 {
            let h = mix64(k);
            assert_eq!(mf.lookup(h), back(mb.lookup(h)));
            assert_eq!(rf.lookup(h), back(rb.lookup(h)));
        }
    }

    /// Placement must never change between versions: a change would move
    /// keys (and their data) on upgrade. These answers are pinned.
    #[test]
    fn placement_is_pinned() {
        let shards = [("alpha", 1), ("beta", 2), ("gamma", 1), ("delta", 3)];
        let keys = [
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
        ];
        assert_eq!(key_hash(b"alice"), 0x1271_8339_5a4c_d5a4);
        let m = Maglev::new(&shards, DEFAULT_TABLE_SIZE).unwrap();
        let r = Rendezvous::new(&shards).unwrap();
        let place = |lookup: &dyn Fn(u64) -> usize| -> Vec<&str> {
            keys.iter()
                .map(|k| shards[lookup(key_hash(k.as_bytes()))].0)
                .collect()
        };
        assert_eq!(
            place(&|h| m.lookup(h)),
            ["delta", "alpha", "beta", "gamma", "delta", "delta", "delta", "delta"]
        );
        assert_eq!(
            place(&|h| r.lookup(h)),
            ["delta", "delta", "beta", "delta", "alpha", "gamma", "beta", "beta"]
        );
    }

    fn range(from: Option<&str>, to: Option<&str>, shard: usize) -> KeyRange {
        KeyRange {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            shard,
        }
    }

    #[test]
    fn ranges_find_half_open_intervals() {
        let r = Ranges::new(vec![
            range(Some("m"), Some("t"), 1),
            range(None, Some("c"), 9),
            range(Some("a"), Some("m"), 0),
            range(Some("t"), None, 2),
        ])
        .err();
        // [None, c) and [a, m) overlap.
        assert_eq!(r, Some((2, "overlaps ranges[1]".into())));

        let r = Ranges::new(vec![
            range(Some("m"), Some("t"), 1),
            range(Some("a"), Some("m"), 0),
            range(Some("t"), None, 2),
        ])
        .unwrap();
        assert_eq!(r.as_slice().len(), 3);
        assert_eq!(r.as_slice()[0].shard, 0, "sorted by `from`");
        assert_eq!(r.find("a"), Some(0));
        assert_eq!(r.find("alice"), Some(0));
        assert_eq!(r.find("lz"), Some(0));
        assert_eq!(r.find("m"), Some(1));
        assert_eq!(r.find("sam"), Some(1));
        assert_eq!(r.find("t"), Some(2));
        assert_eq!(r.find("zoe"), Some(2));
        assert_eq!(r.find("A"), None, "uppercase sorts before `a`");
        assert_eq!(r.find(""), None);

        let gap = Ranges::new(vec![
            range(None, Some("b"), 0),
            range(Some("d"), Some("f"), 1),
        ])
        .unwrap();
        assert_eq!(gap.find(""), Some(0));
        assert_eq!(gap.find("az"), Some(0));
        assert_eq!(gap.find("b"), None);
        assert_eq!(gap.find("c"), None);
        assert_eq!(gap.find("e"), Some(1));
        assert_eq!(gap.find("f"), None);
        assert!(Ranges::default().find("x").is_none());
    }

    #[test]
    fn range_errors_name_the_entry() {
        let err = Ranges::new(vec![range(Some("b"), Some("b"), 0)]).unwrap_err();
        assert_eq!(err.0, 0);
        assert!(err.1.contains("empty range"), "{}", err.1);
        let err =
            Ranges::new(vec![range(Some("a"), None, 0), range(Some("x"), None, 1)]).unwrap_err();
        assert_eq!(err, (1, "overlaps ranges[0]".into()));
        let err = Ranges::new(vec![
            range(Some("k"), Some("p"), 0),
            range(Some("a"), Some("l"), 1),
        ])
        .unwrap_err();
        assert_eq!(err, (1, "overlaps ranges[0]".into()));
    }

    #[test]
    fn capacity_bound() {
        assert_eq!(capacity(0, 1.25, 1, 10), 1);
        assert_eq!(capacity(99, 1.25, 1, 10), 13);
        assert_eq!(capacity(99, 1.25, 2, 10), 25);
        assert_eq!(capacity(5, 1.0, 1, 0), u64::MAX);
        // Some shard always has room: the capacities exceed the total.
        for total in 0..200u64 {
            let sum: u64 = (0..7).map(|_| capacity(total, 1.1, 1, 7)).sum();
            assert!(sum > total);
        }
    }
}
