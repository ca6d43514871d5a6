//! Token classification (NER, POS): pre-split words and one tag per word → sub-word ids with
//! aligned labels, and text with character-offset entity spans → words with BIO tags.
//!
//! The alignment is transformers' token-classification recipe, to the id: the words are
//! tokenized as `is_split_into_words=True` does (each word normalized and pre-tokenized on its
//! own, every piece keeping the word's index), truncated, then special tokens added; the first
//! sub-word of a word carries the word's tag, the others -100 or (every sub-word labelled) the
//! tag with `B-X` turned into `I-X`, so that a word split in three still reads as one entity.

use std::sync::OnceLock;

use rayon::prelude::*;
use regex::Regex;
use tokenizers::{Encoding, NormalizerWrapper, PreTokenizerWrapper, Token, Tokenizer};

use crate::bpe::FxMap;
use crate::encode::{Encoder, IGNORE};
use crate::error::{DataError, Result};

/// For each label id, the id a continuation sub-word carries when every sub-word is labelled:
/// `B-X` → `I-X` when the label list has `I-X`, else the label itself (run_ner.py's
/// `b_to_i_label`, including its `str.replace`, which rewrites every `B-` in the name).
pub fn continuation_labels(labels: &[String]) -> Vec<i32> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let inside = l.replace("B-", "I-");
            match labels.iter().position(|x| *x == inside) {
                Some(j) if l.starts_with("B-") => j as i32,
                _ => i as i32,
            }
        })
        .collect()
}

#[derive(Debug, PartialEq)]
pub struct Tagged {
    pub ids: Vec<u32>,
    pub labels: Vec<i32>,
    /// Tokens before truncation, special tokens included: `> max_length` means words lost.
    pub length: u32,
}

/// The sub-word ids of each word, as the tokenizer gives them for the word alone.
/// `is_split_into_words` normalizes, pre-tokenizes and tokenizes every word on its own (the
/// tokenizers crate's pre-tokenized input), so a sentence's ids are its words' pieces in
/// order: each distinct word of a batch is tokenized once, many words per call (the word ids
/// say which piece is whose).
fn pieces(encoder: &Encoder, words: &[&str]) -> Result<Vec<Vec<u32>>> {
    let tk = encoder.tokenizer();
    let err = |e: tokenizers::Error| DataError::Tokenizer(e.to_string());
    let mut out = vec![Vec::new(); words.len()];
    if !joinable(tk) {
        let enc = tk.encode(words, false).map_err(err)?;
        for (&id, w) in enc.get_ids().iter().zip(enc.get_word_ids()) {
            if let Some(w) = w {
                out[*w as usize].push(id);
            }
        }
        return Ok(out);
    }
    // BERT's normalizer works character by character and its pre-tokenizer splits at every
    // space: the words joined by spaces, encoded as one text, give each word's pieces, and a
    // piece's offset says whose it is. One text costs far less than a pre-tokenized sequence.
    let mut text = String::new();
    let mut starts = Vec::with_capacity(words.len());
    for w in words {
        starts.push(text.len());
        text.push_str(w);
        text.push(' ');
    }
    let enc = encoder.pieces(&text, false)?;
    for (&id, &(start, _)) in enc.ids.iter().zip(&enc.offsets) {
        out[starts.partition_point(|&s| s <= start) - 1].push(id);
    }
    Ok(out)
}

fn joinable(tk: &Tokenizer) -> bool {
    matches!(tk.get_pre_tokenizer(), Some(PreTokenizerWrapper::BertPreTokenizer(_)))
        && matches!(tk.get_normalizer(), None | Some(NormalizerWrapper::BertNormalizer(_)))
}

/// The special tokens the post-processor puts before and after a single sequence. The
/// post-processors (BERT's, RoBERTa's, templates, byte-level) wrap a sequence whatever it
/// holds, so one sentinel sequence shows where: the sentences are then assembled without one
/// post-processing call each.
fn wrapping(tk: &Tokenizer) -> Result<(Vec<u32>, Vec<u32>)> {
    const SENTINEL: u32 = u32::MAX - 7;
    let one = Encoding::from_tokens(vec![Token::new(SENTINEL, String::new(), (0, 0))], 0);
    let enc = tk.post_process(one, None, true).map_err(|e| DataError::Tokenizer(e.to_string()))?;
    let ids = enc.get_ids();
    let at = ids.iter().position(|&i| i == SENTINEL).ok_or_else(|| DataError::Tokenizer("the post-processor dropped the sequence".into()))?;
    Ok((ids[..at].to_vec(), ids[at + 1..].to_vec()))
}

/// One sentence's pieces → ids truncated on the right to fit `max_length` with the special
/// tokens around them, and the aligned labels. `continuation`: `None` labels only the first
/// sub-word of a word, else the label of every later sub-word (see `continuation_labels`). A
/// word tagged -100 stays unlabelled whole.
fn assemble(
    pieces: &[&[u32]],
    tags: &[i32],
    (before, after): (&[u32], &[u32]),
    max_length: usize,
    continuation: Option<&[i32]>,
) -> Result<Tagged> {
    if pieces.len() != tags.len() {
        return Err(DataError::Input(format!("{} words but {} tags", pieces.len(), tags.len())));
    }
    if let Some(bad) = tags.iter().find(|&&t| t != IGNORE && (t < 0 || continuation.is_some_and(|c| t as usize >= c.len()))) {
        return Err(DataError::Input(format!("tag id {bad} is not a label id")));
    }
    let added = before.len() + after.len();
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let length = total + added;
    let keep = if length > max_length { max_length.saturating_sub(added) } else { total };
    let mut ids = Vec::with_capacity(keep + added);
    let mut labels = Vec::with_capacity(keep + added);
    ids.extend_from_slice(before);
    labels.resize(before.len(), IGNORE);
    'words: for (w, p) in pieces.iter().enumerate() {
        for (k, &id) in p.iter().enumerate() {
            if ids.len() - before.len() == keep {
                break 'words;
            }
            ids.push(id);
            labels.push(match (k, continuation) {
                (0, _) => tags[w],
                (_, Some(c)) if tags[w] != IGNORE => c[tags[w] as usize],
                _ => IGNORE,
            });
        }
    }
    ids.extend_from_slice(after);
    labels.resize(ids.len(), IGNORE);
    Ok(Tagged { ids, labels, length: length as u32 })
}

/// Every sentence of a batch, in parallel; each distinct word is tokenized once. The first
/// failure names its row (or the word).
pub fn encode_all(
    encoder: &Encoder,
    words: &[Vec<&str>],
    tags: &[&[i32]],
    max_length: usize,
    continuation: Option<&[i32]>,
) -> Result<Vec<Tagged>> {
    let mut index: FxMap<&str, usize> = FxMap::default();
    let mut unique: Vec<&str> = Vec::new();
    for sentence in words {
        for &w in sentence {
            index.entry(w).or_insert_with(|| {
                unique.push(w);
                unique.len() - 1
            });
        }
    }
    let pieces: Vec<Vec<u32>> = unique
        .par_chunks(512)
        .map(|chunk| pieces(encoder, chunk).map_err(|e| DataError::Input(format!("words {:?}…: {e}", chunk[0]))))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let (before, after) = wrapping(encoder.tokenizer())?;
    (0..words.len())
        .into_par_iter()
        .with_min_len(64)
        .map(|i| {
            let mine: Vec<&[u32]> = words[i].iter().map(|w| pieces[index[w]].as_slice()).collect();
            assemble(&mine, tags[i], (&before, &after), max_length, continuation)
                .map_err(|e| DataError::Input(format!("row {i}: {e}")))
        })
        .collect()
}

pub struct Span<'a> {
    /// Character (code point) offsets, end exclusive: Python's `text[start:end]`.
    pub start: i64,
    pub end: i64,
    pub label: &'a str,
}

#[derive(Debug, Default, PartialEq)]
pub struct Words {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    /// Character offsets of each word in the text.
    pub starts: Vec<i32>,
    pub ends: Vec<i32>,
    /// One line per span left out (the words it covered stay `O`).
    pub problems: Vec<String>,
}

/// A word: a run of characters that are neither whitespace, punctuation nor symbols; each
/// punctuation or symbol character is a word of its own (CoNLL-style tokens: "U.S." is four).
fn word_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"[\p{P}\p{S}]|[^\s\p{P}\p{S}]+").expect("valid regex"))
}

/// Text + entity spans (the export of annotation tools) → words + BIO tags. Whitespace at a
/// span's ends is dropped (annotators often select a trailing space); a span that still
/// starts or ends inside a word, overlaps an earlier one, or lies outside the text is left out
/// and reported, never stretched or cut to fit.
pub fn spans_to_words(text: &str, spans: &[Span]) -> Words {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Words::default();
    let (mut byte, mut char_at) = (0usize, 0usize);
    for m in word_regex().find_iter(text) {
        char_at += text[byte..m.start()].chars().count();
        let n = m.as_str().chars().count();
        out.words.push(m.as_str().to_string());
        out.starts.push(char_at as i32);
        out.ends.push((char_at + n) as i32);
        (byte, char_at) = (m.end(), char_at + n);
    }
    out.tags = vec!["O".to_string(); out.words.len()];
    let mut order: Vec<&Span> = spans.iter().collect();
    order.sort_by_key(|s| (s.start, s.end));
    for span in order {
        let shown = |s: i64, e: i64| -> String { chars[s as usize..e as usize].iter().collect() };
        let what = |why: &str| format!("span {}..{} ({}) {why}", span.start, span.end, span.label);
        if span.start < 0 || span.end > chars.len() as i64 || span.start >= span.end {
            out.problems.push(what(&format!("is empty or outside the text ({} characters)", chars.len())));
            continue;
        }
        let (mut s, mut e) = (span.start, span.end);
        while s < e && chars[s as usize].is_whitespace() {
            s += 1;
        }
        while e > s && chars[e as usize - 1].is_whitespace() {
            e -= 1;
        }
        if s == e {
            out.problems.push(what("covers only whitespace"));
            continue;
        }
        // First word ending after s, last word starting before e: both exist, as s..e holds a
        // non-whitespace character and every such character is in a word.
        let first = out.ends.partition_point(|&we| we as i64 <= s);
        let last = out.starts.partition_point(|&ws| (ws as i64) < e) - 1;
        if out.starts[first] as i64 != s || out.ends[last] as i64 != e {
            let (ws, we) = (out.starts[first] as i64, out.ends[last] as i64);
            out.problems.push(what(&format!("{:?} cuts through a word: {:?}", shown(s, e), shown(ws, we))));
            continue;
        }
        if out.tags[first..=last].iter().any(|t| t != "O") {
            out.problems.push(what(&format!("{:?} overlaps an earlier entity", shown(s, e))));
            continue;
        }
        out.tags[first] = format!("B-{}", span.label);
        for t in &mut out.tags[first + 1..=last] {
            *t = format!("I-{}", span.label);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: i64, end: i64, label: &str) -> Span<'_> {
        Span { start, end, label }
    }

    #[test]
    fn tags_continuation_maps_b_to_i_only_when_i_exists() {
        let labels: Vec<String> = ["O", "B-PER", "I-PER", "B-LOC", "B-B-X", "I-I-X"].map(String::from).to_vec();
        assert_eq!(continuation_labels(&labels), vec![0, 2, 2, 3, 5, 5]);
    }

    #[test]
    fn tags_spans_become_bio_with_char_offsets() {
        let text = "Ana García visited New York, née Zoë.";
        // The trailing space of the first span is dropped, not reported.
        let w = spans_to_words(text, &[span(19, 27, "LOC"), span(0, 11, "PER"), span(33, 36, "PER")]);
        assert_eq!(w.words, ["Ana", "García", "visited", "New", "York", ",", "née", "Zoë", "."]);
        assert_eq!(w.starts, [0, 4, 11, 19, 23, 27, 29, 33, 36]);
        assert_eq!(w.tags, ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "B-PER", "O"]);
        assert!(w.problems.is_empty(), "{:?}", w.problems);
    }

    #[test]
    fn tags_bad_spans_are_reported_not_stretched() {
        let text = "Parisian food in Paris";
        let w = spans_to_words(text, &[span(0, 5, "LOC"), span(16, 22, "LOC"), span(17, 22, "X"), span(20, 40, "Y")]);
        assert_eq!(w.tags, ["O", "O", "O", "B-LOC"]);
        assert_eq!(w.problems.len(), 3);
        assert!(w.problems[0].contains("cuts through a word: \"Parisian\""), "{:?}", w.problems);
        assert!(w.problems[1].contains("overlaps"), "{:?}", w.problems);
        assert!(w.problems[2].contains("outside the text"), "{:?}", w.problems);
    }
}
