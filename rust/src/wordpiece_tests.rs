//! The fast path against the `tokenizers` crate on random texts over an alphabet that mixes
//! ASCII words and punctuation with accents, CJK, control characters and the whitespace BERT
//! treats specially, with and without lower-casing, a text-written added token, short
//! `max_input_chars_per_word` (words that become the unknown token) and missing pieces.

use serde_json::json;
use tokenizers::Tokenizer;

use super::*;

const ALPHABET: &[&str] = &[
    "un", "aff", "able", "run", "ning", "The", "THE", " ", " ", "  ", "\n", "\t", "\r\n", ",", ".", "'", "-", "#", "x",
    "Zq", "é", "É", "ÿ", "中", "\u{0301}", "\u{00a0}", "\u{3000}", "\u{200b}", "\u{0b}", "\u{0c}", "\u{01}", "\u{7f}",
    "[MASK]", "[mask]", "1", "99", "~", "\u{1f}",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn tokenizer(lowercase: bool, prefix: &str, max_chars: usize) -> Tokenizer {
    let mut tokens: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    for t in ["un", "aff", "able", "run", "the", "The", "a", "b", "e", "n", "u", "x", "q", "1", "9", "99", ",", ".", "'",
              "-", "#", "~", "e", "é", "中"] {
        tokens.push(t.to_string());
    }
    for t in ["aff", "able", "ning", "n", "ing", "e", "f", "l", "a", "b", "HE", "h", "E", "9", "1"] {
        tokens.push(format!("{prefix}{t}"));
    }
    tokens.dedup();
    let mut vocab = serde_json::Map::new();
    for t in tokens {
        let n = vocab.len();
        vocab.entry(t).or_insert(json!(n));
    }
    let added = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "[PAD]"), added(1, "[UNK]"), added(2, "[CLS]"), added(3, "[SEP]"), added(4, "[MASK]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": lowercase},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": prefix,
                  "max_input_chars_per_word": max_chars, "vocab": vocab}
    })
    .to_string()
    .parse()
    .unwrap()
}

#[test]
fn pieces_match_tokenizers_on_random_texts() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (round, (lowercase, prefix, max_chars)) in
        [(true, "##", 100), (false, "##", 100), (true, "##", 6), (false, "", 100), (true, "@@", 4)].into_iter().enumerate()
    {
        let tk = tokenizer(lowercase, prefix, max_chars);
        let fast = FastWordPiece::plan(&tk).unwrap_or_else(|e| panic!("round {round}: {e}"));
        for k in 0..600 {
            let len = if k % 50 == 0 { 300 } else { k % 25 };
            let text: String = (0..len).map(|_| ALPHABET[rng.next(ALPHABET.len())]).collect();
            for chars in [true, false] {
                let want = if chars { tk.encode_char_offsets(text.as_str(), false) } else { tk.encode(text.as_str(), false) }
                    .unwrap();
                let got = fast.encode(&tk, &text, chars).unwrap();
                let expected = Pieces {
                    ids: want.get_ids().to_vec(),
                    offsets: want.get_offsets().to_vec(),
                    words: want.get_word_ids().to_vec(),
                };
                assert_eq!(got, expected, "round {round}, chars {chars}, text {text:?}");
            }
        }
    }
}

#[test]
fn ascii_words_do_not_reach_the_pipeline() {
    // An ASCII text with a word the vocabulary cannot cut: the unknown token over the whole word.
    let tk = tokenizer(true, "##", 100);
    let fast = FastWordPiece::plan(&tk).unwrap();
    let got = fast.encode(&tk, "Unaffable zzz, é", true).unwrap();
    assert_eq!(got.ids, vec![tk.token_to_id("un").unwrap(), tk.token_to_id("##aff").unwrap(),
                             tk.token_to_id("##able").unwrap(), 1, tk.token_to_id(",").unwrap(),
                             tk.token_to_id("e").unwrap()]);
    assert_eq!(got.offsets, vec![(0, 2), (2, 5), (5, 9), (10, 13), (13, 14), (15, 16)]);
    assert_eq!(got.words, vec![Some(0), Some(0), Some(0), Some(1), Some(2), Some(3)]);
}

#[test]
fn plan_names_what_it_does_not_cover() {
    let base: serde_json::Value = serde_json::from_str(&tokenizer(true, "##", 100).to_string(false).unwrap()).unwrap();
    let reason = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut j = base.clone();
        edit(&mut j);
        FastWordPiece::plan(&j.to_string().parse().unwrap()).err().unwrap_or_default()
    };
    assert!(reason(&|j| j["normalizer"] = json!({"type": "Lowercase"})).starts_with("normalizer"));
    assert!(reason(&|j| j["pre_tokenizer"] = json!({"type": "Whitespace"})).starts_with("pre-tokenizer"));
    assert!(reason(&|j| j["model"]["unk_token"] = json!("<unk>")).contains("unknown token"));
    assert_eq!(reason(&|_| {}), "");
}
