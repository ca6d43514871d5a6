//! Template → tokens → labels → truncation, for a batch of examples, in parallel.
//!
//! The rendered conversation is tokenized once, whole, with `add_special_tokens=False` — what
//! `apply_chat_template(tokenize=True)` does — and labels come from the byte offsets of the
//! tokens: a token carries a label when it overlaps an assistant content span, and so does the
//! first special token after that span (the turn's end-of-turn marker, e.g. `<|im_end|>`).
//!
//! All threads share one tokenizer: since tokenizers 0.23 the BPE word cache is thread-local
//! (no lock to contend on, huggingface/tokenizers#1900), and that cache is keyed by tokenizer
//! instance, so a clone per task would only leave one more cache behind in every thread.

use std::collections::HashSet;

use rayon::prelude::*;
use tokenizers::{
    truncate_encodings, Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::bpe::FastBpe;
use crate::error::{DataError, Result};
use crate::template::{ChatTemplate, Message};
use crate::wordpiece::{FastWordPiece, Pieces};

pub const IGNORE: i32 = -100;
/// Words per thread in the BPE cache (~100 bytes each).
const WORD_CACHE: usize = 1 << 18;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Truncation {
    Right,
    Left,
    Drop,
    /// Keep whole; the caller concatenates and splits into blocks (continued pre-training).
    Keep,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    TooLong = 1,
    NoLabels = 2,
    Failed = 3,
}

#[derive(Debug)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<i32>,
    pub status: Status,
    pub error: Option<String>,
    /// Tokens before truncation, for the `min_tokens`/`max_tokens` rules.
    pub length: u32,
    /// Token type ids (classification with a text pair), else empty.
    pub type_ids: Vec<u32>,
    /// Hash of the source content (not of the rendering), so a row keeps its split when the
    /// template or tokenizer changes.
    pub content_hash: u64,
}

pub struct Encoder {
    tokenizer: Tokenizer,
    /// The exact fast path for chat and text, when `FastBpe::plan` accepts the tokenizer.
    fast: Option<FastBpe>,
    /// The exact fast path for QA contexts and tagged words, when `FastWordPiece::plan` accepts it.
    wordpiece: Option<FastWordPiece>,
    /// Which encoder runs and why, for the manifest.
    note: String,
    special_ids: HashSet<u32>,
    eos_id: Option<u32>,
}

impl Encoder {
    /// `fast = false` keeps the `tokenizers` crate even where the fast path would be exact.
    pub fn new(tokenizer_json: &str, eos_token: Option<&str>, fast: bool) -> Result<Self> {
        let mut tokenizer: Tokenizer =
            tokenizer_json.parse().map_err(|e: tokenizers::Error| DataError::Tokenizer(e.to_string()))?;
        // transformers ignores the truncation and padding saved in tokenizer.json unless asked;
        // ftc truncates by its own rules, after labelling.
        tokenizer.with_truncation(None).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        // The BPE word cache stops inserting when full (no eviction); 10k words (the default)
        // fill within the first documents of a corpus, and every later rare word is re-merged.
        let mut model = tokenizer.get_model().clone();
        model.resize_cache(WORD_CACHE);
        tokenizer.with_model(model);
        let special_ids =
            tokenizer.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        let eos_id = eos_token.and_then(|t| tokenizer.token_to_id(t));
        let off = "the fast path was turned off";
        let (plan, words) = if fast {
            (FastBpe::plan(&tokenizer), FastWordPiece::plan(&tokenizer))
        } else {
            (Err(off.to_string()), Err(off.to_string()))
        };
        let mut note = match &plan {
            Ok(f) => format!("ftc-bpe: {}", f.describe()),
            Err(why) => format!("tokenizers: {why}"),
        };
        if let Ok(w) = &words {
            note += &format!("; ftc-wordpiece for QA windows and tagged words: {}", w.describe());
        }
        Ok(Self { tokenizer, fast: plan.ok(), wordpiece: words.ok(), note, special_ids, eos_id })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `ftc-bpe: <what it covers>` or `tokenizers: <why the fast path does not apply>`, then
    /// `; ftc-wordpiece…` when that path tokenizes QA windows and tagged words.
    pub fn note(&self) -> &str {
        &self.note
    }

    /// `encode_char_offsets(text, false)` (`chars`) or `encode(text, false)`: ids, offsets, word ids.
    pub fn pieces(&self, text: &str, chars: bool) -> Result<Pieces> {
        let err = |e: tokenizers::Error| DataError::Tokenizer(e.to_string());
        if let Some(w) = &self.wordpiece {
            return w.encode(&self.tokenizer, text, chars).map_err(err);
        }
        let tk = &self.tokenizer;
        let enc = if chars { tk.encode_char_offsets(text, false) } else { tk.encode(text, false) }.map_err(err)?;
        Ok(Pieces { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec(), words: enc.get_word_ids().to_vec() })
    }

    /// `tk.encode(text, false)`'s ids and byte offsets.
    fn encode_plain(&self, tk: &Tokenizer, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        if let Some(f) = &self.fast {
            let (mut ids, mut offsets) = (Vec::with_capacity(text.len() / 3), Vec::with_capacity(text.len() / 3));
            if f.encode(text, &mut ids, &mut offsets) {
                return Ok((ids, offsets));
            }
        }
        let enc = tk.encode(text, false).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// `tk.encode_fast(text, true)`'s ids: the fast path's tokens through the post-processor.
    fn encode_with_specials(&self, tk: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let err = |e: tokenizers::Error| DataError::Tokenizer(e.to_string());
        if self.fast.is_none() {
            return Ok(tk.encode_fast(text, true).map_err(err)?.get_ids().to_vec());
        }
        let (ids, offsets) = self.encode_plain(tk, text)?;
        if tk.get_post_processor().is_none() {
            return Ok(ids);
        }
        let n = ids.len();
        let enc = Encoding::new(ids, vec![0; n], vec![String::new(); n], vec![None; n], offsets, vec![0; n], vec![1; n],
                                vec![], Default::default());
        Ok(tk.post_process(enc, None, true).map_err(err)?.get_ids().to_vec())
    }

    /// Conversations → examples. `train_on_all = false` labels only assistant turns.
    pub fn encode_chat(
        &self,
        template: &ChatTemplate,
        conversations: &[Vec<Message>],
        max_length: usize,
        truncation: Truncation,
        train_on_all: bool,
    ) -> Vec<Example> {
        self.par_map(conversations, |tk, msgs| {
            let chat = self.chat_tokens(tk, template, msgs, train_on_all, None);
            chat_example(chat, msgs, max_length, truncation)
        })
    }

    /// Pairs of conversations that share their start (a preference pair: one prompt, two
    /// answers) → both examples, each exactly as `encode_chat` gives it. The second's text up to
    /// the last special token inside the shared start is not tokenized again: the first's
    /// tokens stand for it. That is exact because a tokenizer splits out added tokens before
    /// anything else, so what follows one is tokenized independently of what precedes it.
    pub fn encode_chat_pairs(
        &self,
        template: &ChatTemplate,
        first: &[Vec<Message>],
        second: &[Vec<Message>],
        max_length: usize,
        truncation: Truncation,
        train_on_all: bool,
    ) -> Vec<(Example, Example)> {
        let tk = &self.tokenizer;
        first
            .par_iter()
            .zip(second.par_iter())
            .with_min_len(8)
            .map(|(a, b)| {
                let shared = self.chat_tokens(tk, template, a, train_on_all, None);
                let other = self.chat_tokens(tk, template, b, train_on_all, shared.as_ref().ok());
                (chat_example(shared, a, max_length, truncation), chat_example(other, b, max_length, truncation))
            })
            .collect()
    }

    /// A conversation rendered and tokenized whole, labelled; with `after`, an earlier one whose
    /// tokens stand for the text the two share, up to its last special token.
    fn chat_tokens(&self, tk: &Tokenizer, template: &ChatTemplate, msgs: &[Message], train_on_all: bool,
                   after: Option<&ChatTokens>) -> Result<ChatTokens> {
        let (text, spans) = template.render_with_spans(msgs)?;
        let (mut ids, mut offsets) = (Vec::new(), Vec::new());
        let mut from = 0;
        if let Some(prev) = after {
            let common = text.bytes().zip(prev.text.bytes()).take_while(|(x, y)| x == y).count();
            let reused = prev.offsets.iter().take_while(|o| o.1 <= common).count();
            if let Some(t) = (0..reused).rev().find(|&t| self.special_ids.contains(&prev.ids[t])) {
                from = prev.offsets[t].0; // the special token itself is tokenized again, with what follows
                ids.extend_from_slice(&prev.ids[..t]);
                offsets.extend_from_slice(&prev.offsets[..t]);
            }
        }
        let (rest, rest_offsets) = self.encode_plain(tk, &text[from..])?;
        ids.extend(rest);
        offsets.extend(rest_offsets.into_iter().map(|(s, e)| (s + from, e + from)));
        let labels = if train_on_all {
            ids.iter().map(|&i| i as i32).collect()
        } else {
            completion_labels(&ids, &offsets, &spans, &self.special_ids)
        };
        Ok(ChatTokens { text, ids, offsets, labels })
    }

    /// Raw text → examples (continued pre-training): special tokens as the tokenizer adds them,
    /// then EOS, every token labelled.
    pub fn encode_text(&self, texts: &[&str], max_length: usize, truncation: Truncation) -> Vec<Example> {
        self.par_map(texts, |tk, text| {
            let hash = content_hash([*text]);
            match self.encode_with_specials(tk, text) {
                Ok(mut ids) => {
                    if let Some(eos) = self.eos_id {
                        if ids.last() != Some(&eos) {
                            ids.push(eos);
                        }
                    }
                    let labels = ids.iter().map(|&i| i as i32).collect();
                    finish(ids, labels, max_length, truncation, hash)
                }
                Err(e) => failed(e, hash),
            }
        })
    }

    /// Text (and optional text pair) → a sequence-classification input, as a transformers
    /// tokenizer called with `truncation=True, max_length=...` builds it: special tokens from
    /// the post-processor, the longest sequence of a pair cut first. No labels: the class
    /// label travels beside.
    pub fn encode_pairs(
        &self,
        texts: &[&str],
        pairs: Option<&[&str]>,
        max_length: usize,
        truncation: Truncation,
    ) -> Vec<Example> {
        let idx: Vec<usize> = (0..texts.len()).collect();
        self.par_map(&idx, |tk, &i| {
            let pair = pairs.map(|p| p[i]);
            let hash = content_hash([texts[i]].into_iter().chain(pair));
            match self.encode_pair(tk, texts[i], pair, max_length, truncation) {
                Ok(ex) => Example { content_hash: hash, ..ex },
                Err(e) => failed(e, hash),
            }
        })
    }

    fn encode_pair(&self, tk: &Tokenizer, text: &str, pair: Option<&str>, max_length: usize,
                   truncation: Truncation) -> Result<Example> {
        let err = |e: tokenizers::Error| DataError::Tokenizer(e.to_string());
        let first = tk.encode_fast(text, false).map_err(err)?;
        let second = pair
            .map(|p| {
                let mut e = tk.encode_fast(p, false).map_err(err)?;
                e.set_type_ids(vec![1; e.len()]);
                Ok::<Encoding, DataError>(e)
            })
            .transpose()?;
        let added = tk.get_post_processor().map_or(0, |p| p.added_tokens(second.is_some()));
        let length = first.len() + second.as_ref().map_or(0, Encoding::len) + added;
        let status = if length > max_length && truncation == Truncation::Drop { Status::TooLong } else { Status::Ok };
        let (first, second) = if length > max_length && status == Status::Ok {
            let params = TruncationParams {
                direction: if truncation == Truncation::Left { TruncationDirection::Left } else { TruncationDirection::Right },
                max_length: max_length.saturating_sub(added),
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            };
            truncate_encodings(first, second, &params).map_err(err)?
        } else {
            (first, second)
        };
        let enc = tk.post_process(first, second, true).map_err(err)?;
        let type_ids = if pair.is_some() { enc.get_type_ids().to_vec() } else { Vec::new() };
        Ok(Example {
            ids: enc.get_ids().to_vec(),
            labels: Vec::new(),
            status,
            error: None,
            length: length as u32,
            type_ids,
            content_hash: 0,
        })
    }

    fn par_map<T: Sync>(&self, items: &[T], f: impl Fn(&Tokenizer, &T) -> Example + Sync) -> Vec<Example> {
        items.par_iter().with_min_len(8).map(|x| f(&self.tokenizer, x)).collect()
    }
}

fn completion_labels(ids: &[u32], offsets: &[(usize, usize)], spans: &[(usize, usize)], special: &HashSet<u32>) -> Vec<i32> {
    let mut labels = vec![IGNORE; ids.len()];
    let mut t = 0;
    for &(s, e) in spans {
        // Tokens ending at or before the span start cannot overlap it.
        while t < ids.len() && offsets[t].1 <= s {
            t += 1;
        }
        while t < ids.len() && offsets[t].0 < e {
            labels[t] = ids[t] as i32;
            t += 1;
        }
        if t < ids.len() && special.contains(&ids[t]) {
            labels[t] = ids[t] as i32;
            t += 1;
        }
    }
    labels
}

/// A rendered conversation's text and its tokens, before truncation.
struct ChatTokens {
    text: String,
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
    labels: Vec<i32>,
}

fn chat_example(chat: Result<ChatTokens>, msgs: &[Message], max_length: usize, truncation: Truncation) -> Example {
    // A message's other keys count only when present: hashes of plain chats are unchanged.
    let hash = content_hash(msgs.iter().flat_map(|m| [m.role, m.content.unwrap_or("")].into_iter().chain(m.extra)));
    match chat {
        Ok(c) => finish(c.ids, c.labels, max_length, truncation, hash),
        Err(e) => failed(e, hash),
    }
}

fn finish(mut ids: Vec<u32>, mut labels: Vec<i32>, max_length: usize, truncation: Truncation, hash: u64) -> Example {
    let mut status = Status::Ok;
    let length = ids.len() as u32;
    if ids.len() > max_length {
        match truncation {
            Truncation::Right => {
                ids.truncate(max_length);
                labels.truncate(max_length);
            }
            Truncation::Left => {
                let cut = ids.len() - max_length;
                ids.drain(..cut);
                labels.drain(..cut);
            }
            Truncation::Drop => status = Status::TooLong,
            Truncation::Keep => {}
        }
    }
    if status == Status::Ok && labels.iter().all(|&l| l == IGNORE) {
        status = Status::NoLabels;
    }
    Example { ids, labels, status, error: None, length, type_ids: Vec::new(), content_hash: hash }
}

fn failed(e: DataError, hash: u64) -> Example {
    Example {
        ids: vec![],
        labels: vec![],
        status: Status::Failed,
        error: Some(e.to_string()),
        length: 0,
        type_ids: vec![],
        content_hash: hash,
    }
}

/// blake3 over the fields with a separator, first 8 bytes little-endian.
pub fn content_hash<'a>(fields: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h = blake3::Hasher::new();
    for f in fields {
        h.update(f.as_bytes());
        h.update(&[0x1f]);
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_labels_cover_span_and_end_of_turn() {
        // tokens: "<s>" "user" ":" "q" "<eot>" "A" ":" "ans" "wer" "<eot>" "\n"
        let ids: Vec<u32> = (0..11).collect();
        let offsets = vec![(0, 3), (3, 7), (7, 8), (8, 9), (9, 14), (14, 15), (15, 16), (16, 19), (19, 22), (22, 27), (27, 28)];
        let special: HashSet<u32> = [0, 4, 9].into_iter().collect();
        let labels = completion_labels(&ids, &offsets, &[(16, 22)], &special);
        assert_eq!(labels, vec![-100, -100, -100, -100, -100, -100, -100, 7, 8, 9, -100]);
    }

    #[test]
    fn truncation_modes() {
        let ids: Vec<u32> = (1..=5).collect();
        let labels: Vec<i32> = vec![-100, -100, 3, 4, 5];
        let r = finish(ids.clone(), labels.clone(), 3, Truncation::Right, 0);
        assert_eq!((r.ids, r.labels, r.status), (vec![1, 2, 3], vec![-100, -100, 3], Status::Ok));
        let l = finish(ids.clone(), labels.clone(), 3, Truncation::Left, 0);
        assert_eq!(l.ids, vec![3, 4, 5]);
        assert_eq!(finish(ids.clone(), labels.clone(), 3, Truncation::Drop, 0).status, Status::TooLong);
        assert_eq!(finish(ids, labels, 2, Truncation::Right, 0).status, Status::NoLabels);
    }
}
