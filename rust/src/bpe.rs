//! Exact byte-level BPE without the `tokenizers` pipeline: added tokens split out, the
//! pre-tokenizer's regex as a scanner (pretok.rs), then rank-ordered merges on the piece's bytes.
//!
//! The merge table is keyed by the pair of ids, as the merges list says, and each step merges
//! the lowest-ranked pair, leftmost first: the order `tokenizers`' heap pops. `tokenizers`
//! checks a popped entry for staleness by the id the pair would produce, so the two agree only
//! when no token is the product of two different merges; `plan` checks that, and everything
//! else this path assumes, on the loaded tokenizer, and names what does not hold so the caller
//! falls back to the `tokenizers` crate.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::pretok::{Pattern, Scanner};

/// Multiplicative hashing: keys are ids or short byte strings, never attacker-chosen tables.
#[derive(Default)]
pub(crate) struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

const NONE: (u32, u32) = (u32::MAX, 0);
/// Pieces longer than this merge through a heap (O(n log n)); shorter ones by rescanning.
const SCAN_MAX: usize = 48;

pub struct FastBpe {
    scanner: Scanner,
    pattern: Pattern,
    byte_ids: [u32; 256],
    /// Bytes without a token, if any: a text containing one goes to `tokenizers`, whose
    /// unknown-token, byte-fallback or dropping rules then apply.
    missing: Option<[bool; 256]>,
    /// `(left << 32 | right)` → `(rank, merged id)`.
    merges: FxMap<u64, (u32, u32)>,
    /// Whole pieces found in the vocabulary, when the model sets `ignore_merges`.
    whole: Option<FxMap<Box<[u8]>, u32>>,
    /// Added tokens matched on the raw text first, then those matched after normalization.
    added: [Option<(AhoCorasick, Vec<u32>)>; 2],
}

/// The byte ↔ printable-character map of byte-level BPE (GPT-2's `bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable { b } else { extra += 1; 255 + extra };
        out[b as usize] = char::from_u32(c).expect("a valid char");
    }
    out
}

pub(crate) fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn empty(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("") || v.as_f64() == Some(0.0)
}

/// The pre-tokenizer's pattern, when it is byte-level without a prefix space.
fn pre_tokenizer(pt: &Value) -> Result<Pattern, String> {
    let byte_level = |v: &Value, regex: bool| {
        *get(v, "type") == "ByteLevel" && *get(v, "add_prefix_space") == false && *get(v, "use_regex") == regex
    };
    if byte_level(pt, true) {
        return Ok(Pattern::Gpt2);
    }
    if let Some([split, bl]) = get(pt, "pretokenizers").as_array().map(Vec::as_slice) {
        let re = get(get(split, "pattern"), "Regex").as_str().unwrap_or("");
        let isolated =
            *get(split, "type") == "Split" && *get(split, "behavior") == "Isolated" && *get(split, "invert") == false;
        if let (true, true, Some(p)) = (isolated, byte_level(bl, false), Pattern::from_regex(re)) {
            return Ok(p);
        }
    }
    Err(format!("pre-tokenizer {} is not a byte-level pattern with a scanner", compact(pt)))
}

/// Whether a post-processor moves offsets (ByteLevel's `trim_offsets`), which labels depend on.
fn trims_offsets(pp: &Value) -> bool {
    (*get(pp, "type") == "ByteLevel" && *get(pp, "trim_offsets") == true)
        || get(pp, "processors").as_array().is_some_and(|ps| ps.iter().any(trims_offsets))
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 120 { format!("{}…", &s[..s.char_indices().nth(120).map_or(s.len(), |(i, _)| i)]) } else { s }
}

impl FastBpe {
    /// The fast encoder for `tokenizer`, or why its output could differ from the tokenizer's.
    pub fn plan(tokenizer: &Tokenizer) -> Result<Self, String> {
        if tokenizer.get_encode_special_tokens() {
            return Err("special tokens are encoded as text (encode_special_tokens)".into());
        }
        let tj = serde_json::to_value(tokenizer).map_err(|e| e.to_string())?;
        let model = get(&tj, "model");
        if *get(model, "type") != "BPE" {
            return Err(format!("model {} is not BPE", get(model, "type")));
        }
        for key in ["dropout", "continuing_subword_prefix", "end_of_word_suffix"] {
            if !empty(get(model, key)) {
                return Err(format!("BPE {key} = {} is not covered", get(model, key)));
            }
        }
        if !get(&tj, "normalizer").is_null() {
            return Err(format!("normalizer {} is not covered", compact(get(&tj, "normalizer"))));
        }
        let pattern = pre_tokenizer(get(&tj, "pre_tokenizer"))?;
        if trims_offsets(get(&tj, "post_processor")) {
            return Err("the post-processor trims offsets (ByteLevel trim_offsets = true)".into());
        }

        let vocab: HashMap<&str, u32> = get(model, "vocab")
            .as_object()
            .ok_or("BPE without a vocabulary")?
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_u64()? as u32)))
            .collect();
        let chars = byte_chars();
        let mut byte_ids = [0u32; 256];
        let mut missing = [false; 256];
        for (b, c) in chars.iter().enumerate() {
            match vocab.get(c.to_string().as_str()) {
                Some(&id) => byte_ids[b] = id,
                // Bytes that never occur in UTF-8 text cannot reach the model.
                None => missing[b] = !matches!(b, 0xC0 | 0xC1 | 0xF5..=0xFF),
            }
        }

        let mut merges = FxMap::default();
        let mut products = HashSet::new();
        for (rank, m) in get(model, "merges").as_array().ok_or("BPE without merges")?.iter().enumerate() {
            let (a, b) = match m {
                Value::String(s) => s.split_once(' ').ok_or_else(|| format!("merge {s:?} is not a pair"))?,
                Value::Array(p) if p.len() == 2 => (p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")),
                _ => return Err(format!("merge {m} is not a pair")),
            };
            let id = |t: &str| vocab.get(t).copied().ok_or_else(|| format!("merge part {t:?} is not in the vocabulary"));
            let (ia, ib, merged) = (id(a)?, id(b)?, id(&format!("{a}{b}"))?);
            if !products.insert(merged) {
                return Err(format!("token {a}{b:?} is the product of more than one merge"));
            }
            merges.insert(u64::from(ia) << 32 | u64::from(ib), (rank as u32, merged));
        }

        let whole = (*get(model, "ignore_merges") == true).then(|| {
            let to_byte: HashMap<char, u8> = chars.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
            vocab
                .iter()
                .filter_map(|(t, &id)| Some((t.chars().map(|c| to_byte.get(&c).copied()).collect::<Option<Vec<u8>>>()?.into(), id)))
                .collect()
        });

        let mut sets: [Vec<(String, u32)>; 2] = Default::default();
        for t in get(&tj, "added_tokens").as_array().into_iter().flatten() {
            for key in ["single_word", "lstrip", "rstrip"] {
                if *get(t, key) == true {
                    return Err(format!("added token {} sets {key}", get(t, "content")));
                }
            }
            let content = get(t, "content").as_str().unwrap_or("");
            if content.is_empty() {
                return Err("an added token is empty".into());
            }
            let id = get(t, "id").as_u64().ok_or("an added token without an id")? as u32;
            sets[usize::from(*get(t, "normalized") == true)].push((content.to_string(), id));
        }
        let added = sets.map(|set| {
            (!set.is_empty()).then(|| {
                let ac = AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(set.iter().map(|(c, _)| c))
                    .expect("literal patterns");
                (ac, set.into_iter().map(|(_, id)| id).collect())
            })
        });
        let missing = missing.iter().any(|&m| m).then_some(missing);
        Ok(Self { scanner: Scanner::new(pattern), pattern, byte_ids, missing, merges, whole, added })
    }

    /// What this encoder covers, for the manifest.
    pub fn describe(&self) -> String {
        let p = match self.pattern {
            Pattern::Gpt2 => "GPT-2",
            Pattern::Llama3 { max_digits: 3 } => "Llama-3",
            Pattern::Llama3 { .. } => "Qwen2",
        };
        let mut note = format!("byte-level BPE, {} merges, {p} pre-tokenizer pattern", self.merges.len());
        if let Some(m) = &self.missing {
            let n = m.iter().filter(|&&x| x).count();
            note += &format!("; texts with one of the {n} bytes missing from the vocabulary go through tokenizers");
        }
        note
    }

    /// Appends the ids of `text` and their byte offsets, as `Tokenizer::encode(text, false)`;
    /// false (nothing appended) when the text holds a byte the vocabulary lacks.
    pub fn encode(&self, text: &str, ids: &mut Vec<u32>, offsets: &mut Vec<(usize, usize)>) -> bool {
        if let Some(m) = &self.missing {
            if text.bytes().any(|b| m[b as usize]) {
                return false;
            }
        }
        let mut scratch = Scratch::default();
        self.split_added(0, text, 0, &mut |s, e, id| match id {
            Some(id) => {
                ids.push(id);
                offsets.push((s, e));
            }
            None => self.scanner.split(&text[s..e], |a, b| {
                self.piece(&text.as_bytes()[s + a..s + b], s + a, &mut scratch, ids, offsets)
            }),
        });
        true
    }

    /// Calls `f(start, end, Some(id))` for each added token and `f(start, end, None)` for the
    /// text between, matching the raw set first and the normalized set inside the gaps.
    fn split_added(&self, set: usize, text: &str, base: usize, f: &mut dyn FnMut(usize, usize, Option<u32>)) {
        let gap = |s: usize, e: usize, f: &mut dyn FnMut(usize, usize, Option<u32>)| {
            if s < e {
                if set == 0 { self.split_added(1, &text[s..e], base + s, f) } else { f(base + s, base + e, None) }
            }
        };
        let Some((ac, ids)) = &self.added[set] else { return gap(0, text.len(), f) };
        let mut at = 0;
        for m in ac.find_iter(text) {
            gap(at, m.start(), f);
            f(base + m.start(), base + m.end(), Some(ids[m.pattern().as_usize()]));
            at = m.end();
        }
        gap(at, text.len(), f);
    }

    #[inline]
    fn pair(&self, a: u32, b: u32) -> (u32, u32) {
        self.merges.get(&(u64::from(a) << 32 | u64::from(b))).copied().unwrap_or(NONE)
    }

    fn piece(&self, bytes: &[u8], start: usize, sc: &mut Scratch, ids: &mut Vec<u32>, offsets: &mut Vec<(usize, usize)>) {
        let whole = self.whole.as_ref().and_then(|w| w.get(bytes));
        if bytes.len() == 1 || whole.is_some() {
            ids.push(whole.copied().unwrap_or(self.byte_ids[bytes[0] as usize]));
            offsets.push((start, start + bytes.len()));
            return;
        }
        let parts = if bytes.len() <= SCAN_MAX { self.merge_scan(bytes, sc) } else { self.merge_heap(bytes, sc) };
        for (k, &(id, s)) in parts.iter().enumerate() {
            let e = parts.get(k + 1).map_or(bytes.len(), |p| p.1 as usize);
            ids.push(id);
            offsets.push((start + s as usize, start + e));
        }
    }

    /// Lowest rank first, leftmost among equals, rescanning the pairs after each merge.
    fn merge_scan<'s>(&self, bytes: &[u8], sc: &'s mut Scratch) -> &'s [(u32, u32)] {
        let (parts, ranks) = (&mut sc.parts, &mut sc.ranks);
        parts.clear();
        parts.extend(bytes.iter().enumerate().map(|(i, &b)| (self.byte_ids[b as usize], i as u32)));
        ranks.clear();
        ranks.extend(parts.windows(2).map(|w| self.pair(w[0].0, w[1].0)));
        loop {
            let Some((at, &(rank, merged))) = ranks.iter().enumerate().min_by_key(|(i, r)| (r.0, *i)) else { break };
            if rank == u32::MAX {
                break;
            }
            parts[at].0 = merged;
            parts.remove(at + 1);
            ranks.remove(at);
            if at < ranks.len() {
                ranks[at] = self.pair(merged, parts[at + 1].0);
            }
            if at > 0 {
                ranks[at - 1] = self.pair(parts[at - 1].0, merged);
            }
        }
        parts
    }

    /// The same order through a min-heap of `(rank, position)` over a linked list of symbols;
    /// an entry whose pair has changed since it was pushed is skipped.
    fn merge_heap<'s>(&self, bytes: &[u8], sc: &'s mut Scratch) -> &'s [(u32, u32)] {
        let n = bytes.len();
        let mut id: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::with_capacity(n);
        let push = |heap: &mut BinaryHeap<_>, id: &[u32], a: usize, b: usize| {
            let (rank, _) = self.pair(id[a], id[b]);
            if rank != u32::MAX {
                heap.push(Reverse((rank, a)));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &id, i, i + 1);
        }
        while let Some(Reverse((rank, at))) = heap.pop() {
            let nx = next[at];
            if !alive[at] || nx >= n {
                continue;
            }
            let (r, merged) = self.pair(id[at], id[nx]);
            if r != rank {
                continue;
            }
            id[at] = merged;
            alive[nx] = false;
            next[at] = next[nx];
            if next[at] < n {
                prev[next[at]] = at;
                push(&mut heap, &id, at, next[at]);
            }
            if prev[at] < n {
                push(&mut heap, &id, prev[at], at);
            }
        }
        sc.parts.clear();
        let mut i = 0;
        while i < n {
            sc.parts.push((id[i], i as u32));
            i = next[i];
        }
        &sc.parts
    }
}

#[derive(Default)]
struct Scratch {
    parts: Vec<(u32, u32)>,
    ranks: Vec<(u32, u32)>,
}

#[cfg(test)]
#[path = "bpe_tests.rs"]
mod tests;
