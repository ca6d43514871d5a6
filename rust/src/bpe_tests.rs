//! The fast path against the `tokenizers` crate on random byte-level BPE tokenizers: random
//! merges over a small alphabet (so that long merge chains fire), both pattern families, with
//! and without `ignore_merges`, with raw and normalized added tokens.

use serde_json::json;
use tokenizers::Tokenizer;

use super::*;
use crate::pretok::{LLAMA3, QWEN2};

const ALPHABET: &[&str] = &["a", "b", "c", "a", "b", " ", " ", "\n", "é", "🙂", "1", "'", "s", "!", "\t", "<x>", "<y", "y>"];

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A tokenizer.json with 256 byte tokens, `n_merges` random merges of tokens that occur in
/// the alphabet's text (no token made twice), two added tokens.
fn random_tokenizer(rng: &mut Rng, n_merges: usize, pre: serde_json::Value, ignore_merges: bool) -> String {
    let chars = byte_chars();
    let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut seeds: Vec<String> = "abc é🙂1's!\n".bytes().map(|b| chars[b as usize].to_string()).collect();
    seeds.sort();
    seeds.dedup();
    let mut merges = Vec::new();
    let mut tries = 0;
    while merges.len() < n_merges && tries < 100 * n_merges {
        tries += 1;
        let a = seeds[rng.next(seeds.len())].clone();
        let b = seeds[rng.next(seeds.len())].clone();
        let ab = format!("{a}{b}");
        if ab.chars().count() > 8 || vocab.contains(&ab) {
            continue;
        }
        vocab.push(ab.clone());
        seeds.push(ab);
        merges.push(json!([a, b]));
    }
    let mut vocab_json: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let n = vocab.len();
    vocab_json.insert("<x>".into(), json!(n));
    vocab_json.insert("<yy>".into(), json!(n + 1));
    let added = |id: usize, content: &str, normalized: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": normalized, "special": !normalized})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(n, "<x>", false), added(n + 1, "<yy>", true)],
        "normalizer": null, "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab_json, "merges": merges}
    })
    .to_string()
}

fn byte_level(use_regex: bool) -> serde_json::Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_bytes(pattern: &str) -> serde_json::Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        byte_level(false)]})
}

#[test]
fn ids_match_tokenizers_on_random_tokenizers() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let pres = [byte_level(true), split_then_bytes(LLAMA3), split_then_bytes(QWEN2)];
    for round in 0..12 {
        let json = random_tokenizer(&mut rng, 40 + 30 * round, pres[round % 3].clone(), round % 2 == 1);
        let tk: Tokenizer = json.parse().unwrap();
        let fast = FastBpe::plan(&tk).unwrap_or_else(|e| panic!("round {round}: {e}"));
        for k in 0..400 {
            let len = if k % 50 == 0 { 400 } else { k % 30 };
            let text: String = (0..len).map(|_| ALPHABET[rng.next(ALPHABET.len())]).collect();
            let want = tk.encode(text.as_str(), false).unwrap();
            let (mut ids, mut offsets) = (Vec::new(), Vec::new());
            assert!(fast.encode(&text, &mut ids, &mut offsets));
            assert_eq!(ids, want.get_ids(), "round {round}, text {text:?}");
            // Byte offsets lie within the tokenizers' (character-widened) ones, so every
            // character-aligned span overlaps the same tokens.
            for (&(s, e), &(ws, we)) in offsets.iter().zip(want.get_offsets()) {
                assert!(ws <= s && s < e && e <= we, "round {round}, text {text:?}: {:?} vs {:?}", (s, e), (ws, we));
            }
        }
    }
}

#[test]
fn plan_names_what_it_does_not_cover() {
    let mut rng = Rng(7);
    let base: serde_json::Value = random_tokenizer(&mut rng, 30, byte_level(true), false).parse().unwrap();
    let reason = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut j = base.clone();
        edit(&mut j);
        FastBpe::plan(&j.to_string().parse().unwrap()).err().unwrap_or_default()
    };
    assert_eq!(reason(&|_| {}), "");
    assert!(reason(&|j| j["normalizer"] = json!({"type": "NFC"})).starts_with("normalizer"));
    assert!(reason(&|j| j["pre_tokenizer"] = split_then_bytes(r"\s+")).starts_with("pre-tokenizer"));
    assert!(reason(&|j| j["pre_tokenizer"]["add_prefix_space"] = json!(true)).starts_with("pre-tokenizer"));
    assert!(reason(&|j| j["post_processor"]["trim_offsets"] = json!(true)).contains("trims offsets"));
    assert!(reason(&|j| j["added_tokens"][0]["lstrip"] = json!(true)).contains("lstrip"));
    assert!(reason(&|j| j["model"]["dropout"] = json!(0.1)).contains("dropout"));
    // A token reachable by two merges: tokenizers' heap would not follow rank order exactly.
    assert!(reason(&|j| {
        let vocab = j["model"]["vocab"].as_object_mut().unwrap();
        for t in ["ab", "bc", "abc"] {
            let n = vocab.len() + 10;
            vocab.entry(t).or_insert(json!(n));
        }
        let merges = j["model"]["merges"].as_array_mut().unwrap();
        merges.extend([json!(["a", "b"]), json!(["b", "c"]), json!(["ab", "c"]), json!(["a", "bc"])]);
    })
    .contains("more than one merge"));
}

#[test]
fn texts_with_a_byte_missing_from_the_vocabulary_are_left_to_tokenizers() {
    let mut j: serde_json::Value = random_tokenizer(&mut Rng(11), 30, byte_level(true), false).parse().unwrap();
    let v = j["model"]["vocab"].as_object_mut().unwrap();
    let id = v.remove("Ā").unwrap(); // byte 0x00
    v.insert("Ā-gone".into(), id);
    let fast = FastBpe::plan(&j.to_string().parse().unwrap()).unwrap();
    assert!(fast.describe().contains("1 bytes missing"));
    let (mut ids, mut offsets) = (Vec::new(), Vec::new());
    assert!(!fast.encode("a\0b", &mut ids, &mut offsets));
    assert!(ids.is_empty());
    assert!(fast.encode("ab", &mut ids, &mut offsets));
    assert!(!ids.is_empty());
}
