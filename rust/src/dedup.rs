//! Exact and near-duplicate detection, streamed in source order: a text is a duplicate when an
//! earlier kept text matches it, so the first occurrence is the one kept and a later batch is
//! checked against everything kept before it.
//!
//! Both modes compare a key text: lowercased, whitespace collapsed. `exact` keeps a 128-bit
//! blake3 of the key per kept text. `near` is MinHash over character shingles with LSH
//! banding, then a check of the estimated Jaccard similarity against the threshold, so a band
//! collision alone never removes a text. The MinHash is one-permutation hashing with optimal
//! densification (Shrivastava, ICML 2017): each shingle is hashed once into one of `num_perm`
//! bins instead of `num_perm` times, which makes a signature O(shingles + num_perm) and near
//! dedup of 100k documents a matter of seconds; the collision probability per bin is the
//! Jaccard similarity, as with classic MinHash.
//!
//! Signatures are computed in parallel; the index is queried and updated sequentially.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use crate::clean::is_space;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Near {
    pub threshold: f64,
    pub shingle: usize,
    pub num_perm: usize,
}

/// The keys are hashes already: no need to hash them again.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64 ^ (v >> 64) as u64;
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<Identity>>;

pub enum Dedup {
    Exact { seen: Map<u128, u64>, count: u64 },
    Near(NearIndex),
}

pub struct NearIndex {
    p: Near,
    bands: usize,
    rows: usize,
    /// (band, key) → the last kept text with this band key; `chain` links to the previous one.
    buckets: Map<u64, u32>,
    chain: Vec<u32>,
    sigs: Vec<u32>,
    kept: Vec<u64>,
    count: u64,
}

impl Dedup {
    pub fn exact() -> Self {
        Dedup::Exact { seen: Map::default(), count: 0 }
    }

    pub fn near(p: Near) -> Self {
        // Every candidate is verified, so a false positive of the banding costs one signature
        // comparison while a false negative is a duplicate kept: weigh misses 4× heavier than
        // datasketch's default (which does not verify).
        let (bands, rows) = lsh_params(p.threshold, p.num_perm, 0.2, 0.8);
        Dedup::Near(NearIndex {
            p,
            bands,
            rows,
            buckets: Map::default(),
            chain: Vec::new(),
            sigs: Vec::new(),
            kept: Vec::new(),
            count: 0,
        })
    }

    /// For each text: `None` when kept, else the sequence number (over every text ever passed
    /// in) of the earlier kept text it duplicates.
    pub fn check(&mut self, texts: &[&str]) -> Vec<Option<u64>> {
        match self {
            Dedup::Exact { seen, count } => {
                let keys: Vec<u128> = texts.par_iter().with_min_len(256).map(|t| exact_key(t)).collect();
                keys.into_iter()
                    .map(|k| {
                        let seq = *count;
                        *count += 1;
                        match seen.get(&k) {
                            Some(&first) => Some(first),
                            None => {
                                seen.insert(k, seq);
                                None
                            }
                        }
                    })
                    .collect()
            }
            Dedup::Near(index) => {
                let p = index.p;
                let sigs: Vec<Vec<u32>> =
                    texts.par_iter().with_min_len(16).map(|t| signature(&key_text(t), p.shingle, p.num_perm)).collect();
                sigs.into_iter().map(|s| index.check(s)).collect()
            }
        }
    }
}

impl NearIndex {
    fn check(&mut self, sig: Vec<u32>) -> Option<u64> {
        let seq = self.count;
        self.count += 1;
        let keys: Vec<u64> = (0..self.bands).map(|b| band_key(b, &sig[b * self.rows..(b + 1) * self.rows])).collect();
        let need = (self.p.threshold * self.p.num_perm as f64).ceil() as usize;
        let mut best: Option<u32> = None;
        for (band, key) in keys.iter().enumerate() {
            let mut doc = self.buckets.get(key).copied().unwrap_or(NONE);
            while doc != NONE {
                let d = doc as usize;
                if best.is_none_or(|b| doc < b) {
                    let other = &self.sigs[d * self.p.num_perm..(d + 1) * self.p.num_perm];
                    let same = other.iter().zip(&sig).filter(|(a, b)| a == b).count();
                    if same >= need {
                        best = Some(doc);
                    }
                }
                doc = self.chain[d * self.bands + band];
            }
        }
        if let Some(b) = best {
            return Some(self.kept[b as usize]);
        }
        let doc = self.kept.len() as u32;
        for key in keys {
            let prev = self.buckets.insert(key, doc).unwrap_or(NONE);
            self.chain.push(prev);
        }
        self.sigs.extend_from_slice(&sig);
        self.kept.push(seq);
        None
    }
}

/// The text that duplicates are compared on: lowercased, whitespace collapsed.
pub fn key_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

fn exact_key(text: &str) -> u128 {
    let h = blake3::hash(key_text(text).as_bytes());
    u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
}

pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(h)
}

/// One-permutation MinHash of the character shingles of `text`, densified.
pub fn signature(text: &str, shingle: usize, num_perm: usize) -> Vec<u32> {
    let mut bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    bounds.push(text.len());
    let chars = bounds.len() - 1;
    let mut sig = vec![u32::MAX; num_perm];
    let mut filled = vec![false; num_perm];
    let mut add = |bytes: &[u8]| {
        let h = hash_bytes(bytes);
        let bin = (((h >> 32) * num_perm as u64) >> 32) as usize;
        sig[bin] = sig[bin].min(h as u32);
        filled[bin] = true;
    };
    if chars <= shingle {
        add(text.as_bytes());
    } else {
        for w in 0..=chars - shingle {
            add(&text.as_bytes()[bounds[w]..bounds[w + shingle]]);
        }
    }
    // Optimal densification: an empty bin takes the value of the first filled bin that a
    // data-independent probe sequence reaches, so equal sets still give equal signatures.
    let original = sig.clone();
    for i in 0..num_perm {
        if filled[i] {
            continue;
        }
        for attempt in 1u64.. {
            let j = (((mix((i as u64) << 32 | attempt) >> 32) * num_perm as u64) >> 32) as usize;
            if filled[j] {
                sig[i] = original[j];
                break;
            }
        }
    }
    sig
}

fn band_key(band: usize, values: &[u32]) -> u64 {
    let mut h = mix(band as u64 + 1);
    for &v in values {
        h = mix(h ^ u64::from(v));
    }
    h
}

/// Bands × rows that minimize the weighted areas of false positives and false negatives
/// around `threshold`, as datasketch's `_optimal_param` chooses them.
pub fn lsh_params(threshold: f64, num_perm: usize, fp_weight: f64, fn_weight: f64) -> (usize, usize) {
    let integrate = |f: &dyn Fn(f64) -> f64, a: f64, b: f64| {
        let n = 200;
        let h = (b - a) / n as f64;
        (0..=n).map(|i| f(a + i as f64 * h) * if i == 0 || i == n { 0.5 } else { 1.0 }).sum::<f64>() * h
    };
    let mut best = (f64::INFINITY, 1, num_perm);
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let p = |s: f64| 1.0 - (1.0 - s.powi(r as i32)).powi(b as i32);
            let fp = integrate(&|s| p(s), 0.0, threshold);
            let fneg = integrate(&|s| 1.0 - p(s), threshold, 1.0);
            let cost = fp_weight * fp + fn_weight * fneg;
            if cost < best.0 {
                best = (cost, b, r);
            }
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_keeps_first_occurrence_across_batches() {
        let mut d = Dedup::exact();
        assert_eq!(d.check(&["a b", "A  b", "c"]), vec![None, Some(0), None]);
        assert_eq!(d.check(&["c", "d"]), vec![Some(2), None]);
    }

    #[test]
    fn near_finds_small_edits_not_different_texts() {
        let base = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat";
        let edited = base.replace("lazy", "lazzy");
        let other = "completely different words about training language models on packed rows";
        let mut d = Dedup::near(Near { threshold: 0.8, shingle: 5, num_perm: 128 });
        assert_eq!(d.check(&[base, other, &edited]), vec![None, None, Some(0)]);
    }

    #[test]
    fn signature_similarity_tracks_jaccard() {
        let a: String = (0..400).map(|i| format!("w{i} ")).collect();
        let b: String = (0..400).map(|i| if i % 10 == 0 { format!("x{i} ") } else { format!("w{i} ") }).collect();
        let (sa, sb) = (signature(&a, 5, 256), signature(&b, 5, 256));
        let est = sa.iter().zip(&sb).filter(|(x, y)| x == y).count() as f64 / 256.0;
        let shingles = |t: &str| -> std::collections::HashSet<String> {
            let c: Vec<char> = t.chars().collect();
            c.windows(5).map(|w| w.iter().collect()).collect()
        };
        let (x, y) = (shingles(&a), shingles(&b));
        let jac = x.intersection(&y).count() as f64 / x.union(&y).count() as f64;
        assert!((est - jac).abs() < 0.1, "estimate {est} vs jaccard {jac}");
    }

    #[test]
    fn lsh_params_like_datasketch() {
        // datasketch.lsh._optimal_param(t, 128, 0.5, 0.5)
        assert_eq!(lsh_params(0.5, 128, 0.5, 0.5), (25, 5));
        assert_eq!(lsh_params(0.8, 128, 0.5, 0.5), (9, 13));
        assert_eq!(lsh_params(0.9, 128, 0.5, 0.5), (5, 25));
    }
}
