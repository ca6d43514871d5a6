//! Exact WordPiece (BERT-family tokenizers) without the `tokenizers` pipeline, for the words
//! that are printable ASCII: the QA windows and tagged words tokenize every context and word
//! through here, and the pipeline's per-character alignment bookkeeping was most of their time.
//!
//! A text is cut at ASCII whitespace (which BERT's normalizer turns into spaces and its
//! pre-tokenizer splits at) into chunks. A chunk of printable ASCII is normalized (lower case,
//! if the normalizer says so: nothing else in BERT's normalizer touches ASCII), split into
//! words at punctuation (each punctuation character a word of its own) and cut greedily into
//! the longest vocabulary pieces, exactly as `tokenizers`' WordPiece does. A run of other
//! chunks (accents, CJK, control characters) goes to `tokenizers` as one span: every step of
//! BERT's pipeline works within a chunk, so a span's tokens are those of the whole text there.
//! A text that may hold an added token (`[MASK]` written out) goes to `tokenizers` whole.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use tokenizers::Tokenizer;

use crate::bpe::{get, FxMap};

/// Tokens of one text: ids, offsets (characters or bytes, as asked) and each token's word.
#[derive(Debug, Default, PartialEq)]
pub struct Pieces {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
    pub words: Vec<Option<u32>>,
}

pub struct FastWordPiece {
    /// Tokens that may start a word, and the continuation tokens keyed without their prefix.
    start: FxMap<Box<[u8]>, u32>,
    cont: FxMap<Box<[u8]>, u32>,
    /// Bytes of the longest key of each map: no longer slice can match.
    longest: [usize; 2],
    unk: u32,
    max_chars: usize,
    lowercase: bool,
    /// Every added token, ASCII case ignored (a superset of what the pipeline would match).
    added: Option<AhoCorasick>,
}

/// ASCII whitespace as BERT's pipeline treats it: `\x0b` and `\x0c` are control characters,
/// which its normalizer removes (joining what they separate), so they are not boundaries.
fn space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl FastWordPiece {
    /// The fast encoder for `tokenizer`, or why its output could differ from the tokenizer's.
    pub fn plan(tokenizer: &Tokenizer) -> Result<Self, String> {
        if tokenizer.get_encode_special_tokens() {
            return Err("special tokens are encoded as text (encode_special_tokens)".into());
        }
        let tj = serde_json::to_value(tokenizer).map_err(|e| e.to_string())?;
        let model = get(&tj, "model");
        if *get(model, "type") != "WordPiece" {
            return Err(format!("model {} is not WordPiece", get(model, "type")));
        }
        let normalizer = get(&tj, "normalizer");
        let lowercase = match get(normalizer, "type").as_str() {
            None if normalizer.is_null() => false,
            Some("BertNormalizer") => *get(normalizer, "lowercase") == true,
            _ => return Err(format!("normalizer {} is not BERT's", get(normalizer, "type"))),
        };
        if *get(get(&tj, "pre_tokenizer"), "type") != "BertPreTokenizer" {
            return Err(format!("pre-tokenizer {} is not BERT's", get(get(&tj, "pre_tokenizer"), "type")));
        }
        let prefix = get(model, "continuing_subword_prefix").as_str().unwrap_or("").as_bytes();
        let max_chars = get(model, "max_input_chars_per_word").as_u64().ok_or("WordPiece without max_input_chars_per_word")?;
        let vocab: HashMap<&str, u32> = get(model, "vocab")
            .as_object()
            .ok_or("WordPiece without a vocabulary")?
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_u64()? as u32)))
            .collect();
        let unk_token = get(model, "unk_token").as_str().unwrap_or("");
        let unk = *vocab.get(unk_token).ok_or_else(|| format!("the unknown token {unk_token:?} is not in the vocabulary"))?;
        let (mut start, mut cont) = (FxMap::default(), FxMap::default());
        for (token, &id) in &vocab {
            let t = token.as_bytes();
            start.insert(t.into(), id);
            if !prefix.is_empty() && t.len() > prefix.len() && t.starts_with(prefix) {
                cont.insert(t[prefix.len()..].into(), id);
            }
        }
        if prefix.is_empty() {
            cont = start.clone();
        }
        let longest = |m: &FxMap<Box<[u8]>, u32>| m.keys().map(|k| k.len()).max().unwrap_or(0);
        let mut contents = Vec::new();
        for t in get(&tj, "added_tokens").as_array().into_iter().flatten() {
            let content = get(t, "content").as_str().unwrap_or("");
            // Matched after normalization, a token with a space could span two chunks.
            if content.is_empty() || (*get(t, "normalized") == true && content.bytes().any(space)) {
                return Err(format!("added token {content:?} is not covered"));
            }
            contents.push(content.to_string());
        }
        let added = (!contents.is_empty())
            .then(|| AhoCorasickBuilder::new().ascii_case_insensitive(true).build(&contents).expect("literal patterns"));
        Ok(Self { longest: [longest(&start), longest(&cont)], start, cont, unk, max_chars: max_chars as usize, lowercase, added })
    }

    /// What this encoder covers, for the manifest.
    pub fn describe(&self) -> String {
        format!("WordPiece, {} tokens{}; printable-ASCII words, the rest through tokenizers", self.start.len(),
                if self.lowercase { ", lower-cased" } else { "" })
    }

    /// `tokenizer.encode_char_offsets(text, false)` (`chars`) or `tokenizer.encode(text, false)`:
    /// its ids, offsets and word ids.
    pub fn encode(&self, tk: &Tokenizer, text: &str, chars: bool) -> tokenizers::Result<Pieces> {
        let mut out = Pieces::default();
        if self.added.as_ref().is_some_and(|ac| ac.is_match(text)) {
            pipeline(tk, text, chars, (0, 0), &mut out)?;
            return Ok(out);
        }
        let b = text.as_bytes();
        let (mut i, mut ci) = (0, 0); // byte and character position
        let mut slow: Option<(usize, usize, usize)> = None; // pending span: byte start, char start, byte end
        let mut words = 0u32;
        let mut lower = Vec::new();
        while i < b.len() {
            if space(b[i]) {
                (i, ci) = (i + 1, ci + 1);
                continue;
            }
            let (s, cs) = (i, ci);
            let mut ascii = true;
            while i < b.len() && !space(b[i]) {
                ascii &= (0x21..=0x7e).contains(&b[i]);
                ci += usize::from(b[i] & 0xC0 != 0x80);
                i += 1;
            }
            if !ascii {
                slow = Some(slow.map_or((s, cs, i), |(ss, scs, _)| (ss, scs, i)));
                continue;
            }
            if let Some((ss, scs, se)) = slow.take() {
                words += pipeline(tk, &text[ss..se], chars, (if chars { scs } else { ss }, words), &mut out)?;
            }
            let chunk = if self.lowercase {
                lower.clear();
                lower.extend(b[s..i].iter().map(u8::to_ascii_lowercase));
                &lower[..]
            } else {
                &b[s..i]
            };
            let base = if chars { cs } else { s };
            let mut w = 0;
            while w < chunk.len() {
                let end = if chunk[w].is_ascii_punctuation() {
                    w + 1
                } else {
                    w + chunk[w..].iter().position(u8::is_ascii_punctuation).unwrap_or(chunk.len() - w)
                };
                self.word(&chunk[w..end], base + w, words, &mut out);
                words += 1;
                w = end;
            }
        }
        if let Some((ss, scs, se)) = slow {
            pipeline(tk, &text[ss..se], chars, (if chars { scs } else { ss }, words), &mut out)?;
        }
        Ok(out)
    }

    /// WordPiece's greedy longest-match-first cut of one word; the whole word is the unknown
    /// token when it is too long or a position has no piece.
    fn word(&self, w: &[u8], at: usize, word: u32, out: &mut Pieces) {
        let n = out.ids.len();
        if w.len() <= self.max_chars {
            let mut s = 0;
            'piece: while s < w.len() {
                let (map, longest) = if s == 0 { (&self.start, self.longest[0]) } else { (&self.cont, self.longest[1]) };
                let mut e = w.len().min(s + longest);
                while e > s {
                    if let Some(&id) = map.get(&w[s..e]) {
                        out.ids.push(id);
                        out.offsets.push((at + s, at + e));
                        out.words.push(Some(word));
                        s = e;
                        continue 'piece;
                    }
                    e -= 1;
                }
                break;
            }
            if s == w.len() {
                return;
            }
        }
        out.ids.truncate(n);
        out.offsets.truncate(n);
        out.words.truncate(n);
        out.ids.push(self.unk);
        out.offsets.push((at, at + w.len()));
        out.words.push(Some(word));
    }
}

/// `text` through `tokenizers`, its offsets and word ids moved by `(offset, word)`; returns the
/// words it held.
fn pipeline(tk: &Tokenizer, text: &str, chars: bool, (offset, word): (usize, u32), out: &mut Pieces) -> tokenizers::Result<u32> {
    let enc = if chars { tk.encode_char_offsets(text, false)? } else { tk.encode(text, false)? };
    out.ids.extend_from_slice(enc.get_ids());
    out.offsets.extend(enc.get_offsets().iter().map(|&(s, e)| (s + offset, e + offset)));
    out.words.extend(enc.get_word_ids().iter().map(|w| w.map(|w| w + word)));
    Ok(enc.get_word_ids().iter().flatten().max().map_or(0, |&m| m + 1))
}

#[cfg(test)]
#[path = "wordpiece_tests.rs"]
mod tests;
