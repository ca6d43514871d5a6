//! Extractive question answering: a question and its context → overlapping windows of at most
//! `max_length` tokens, as a transformers tokenizer builds them when called with
//! `truncation="only_second", stride=doc_stride, return_overflowing_tokens=True,
//! return_offsets_mapping=True` (question first, only the context is cut).
//!
//! Each window keeps what evaluation and serving need to map a predicted token span back onto
//! the context: the character offsets and word ids of its context tokens (-1 for the question
//! and special tokens), and for training the answer's start/end token, or 0 (the CLS position,
//! the "no answer" target) when the answer is absent or not wholly inside the window.

use std::collections::HashMap;

use rayon::prelude::*;
use tokenizers::{
    truncate_encodings, Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{DataError, Result};

/// The position trained on when a window holds no answer.
pub const CLS: i32 = 0;

#[derive(Debug, Default, PartialEq)]
pub struct Window {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Character offsets into the context; -1 outside it.
    pub starts: Vec<i32>,
    pub ends: Vec<i32>,
    /// The context word each token belongs to; -1 outside the context.
    pub words: Vec<i32>,
    /// The answer's first and last token, or `CLS` for both.
    pub answer: (i32, i32),
}

/// One example: its question, its context and the character span of its (first) answer.
pub struct Example<'a> {
    pub question: &'a str,
    pub context: &'a str,
    pub answer: Option<(usize, usize)>,
}

/// Every example's windows, or the reason it has none; in example order.
pub fn encode_windows(
    tk: &Tokenizer,
    examples: &[Example],
    max_length: usize,
    stride: usize,
) -> Vec<Result<Vec<Window>>> {
    // A context is usually asked several questions (SQuAD: ~6 per paragraph) and is most of the
    // tokens: each distinct context is tokenized once, its encoding copied for each question.
    let mut slot: HashMap<&str, usize> = HashMap::new();
    let mut distinct: Vec<&str> = Vec::new();
    let which: Vec<usize> = examples
        .iter()
        .map(|e| {
            *slot.entry(e.context).or_insert_with(|| {
                distinct.push(e.context);
                distinct.len() - 1
            })
        })
        .collect();
    let contexts: Vec<std::result::Result<Encoding, String>> =
        distinct.par_iter().with_min_len(8).map(|c| context_encoding(tk, c)).collect();
    examples
        .par_iter()
        .zip(which.par_iter())
        .with_min_len(8)
        .map(|(e, &i)| match &contexts[i] {
            Ok(c) => windows(tk, e, c.clone(), max_length, stride),
            Err(msg) => Err(DataError::Tokenizer(msg.clone())),
        })
        .collect()
}

/// A context's tokens, all of the second sequence (type id 1).
fn context_encoding(tk: &Tokenizer, context: &str) -> std::result::Result<Encoding, String> {
    let mut c = tk.encode_char_offsets(context, false).map_err(|e| e.to_string())?;
    c.set_type_ids(vec![1; c.len()]);
    Ok(c)
}

fn windows(tk: &Tokenizer, ex: &Example, c: Encoding, max_length: usize, stride: usize) -> Result<Vec<Window>> {
    let err = |e: tokenizers::Error| DataError::Tokenizer(e.to_string());
    // Leading spaces would only cost room in the window (run_qa.py strips them the same way).
    let question = ex.question.trim_start_matches(py_space);
    let q = tk.encode_char_offsets(question, false).map_err(err)?;
    let added = tk.get_post_processor().map_or(0, |p| p.added_tokens(true));
    let room = max_length as i64 - added as i64 - q.len() as i64;
    if q.len() + c.len() + added > max_length {
        // The tokenizer panics (stride) or fails (no room) on these; say which and why instead.
        if room <= 0 {
            return Err(DataError::Input(format!(
                "the question has {} tokens, which leaves no room for the context in max_length {max_length}",
                q.len()
            )));
        }
        if stride as i64 >= room {
            return Err(DataError::Input(format!(
                "doc_stride {stride} must be less than the {room} context tokens a window of max_length \
                 {max_length} holds after this {}-token question",
                q.len()
            )));
        }
    }
    let params = TruncationParams {
        max_length: max_length - added,
        stride,
        strategy: TruncationStrategy::OnlySecond,
        direction: TruncationDirection::Right,
    };
    let (q, c) = truncate_encodings(q, Some(c), &params).map_err(err)?;
    let mut first = tk.post_process(q, c, true).map_err(err)?;
    let rest = first.take_overflowing();
    Ok(std::iter::once(first).chain(rest).map(|w| window(&w, ex.answer)).collect())
}

fn window(enc: &Encoding, answer: Option<(usize, usize)>) -> Window {
    let in_context: Vec<bool> = enc.get_sequence_ids().iter().map(|s| *s == Some(1)).collect();
    let pick = |i: usize, v: i32| if in_context[i] { v } else { -1 };
    let offsets = enc.get_offsets();
    let words = enc.get_word_ids();
    Window {
        ids: enc.get_ids().to_vec(),
        type_ids: enc.get_type_ids().to_vec(),
        starts: (0..enc.len()).map(|i| pick(i, offsets[i].0 as i32)).collect(),
        ends: (0..enc.len()).map(|i| pick(i, offsets[i].1 as i32)).collect(),
        words: (0..enc.len()).map(|i| pick(i, words[i].map_or(-1, |w| w as i32))).collect(),
        answer: answer.map_or((CLS, CLS), |a| answer_tokens(offsets, &in_context, a)),
    }
}

/// The first and last context token of the answer `(start_char, end_char)`, or `(CLS, CLS)` when
/// the window does not hold all of it. The scans stay inside the context: run_qa.py lets the
/// start scan run on into the trailing separator when the answer begins in the window's last
/// context token, which labels the separator.
fn answer_tokens(offsets: &[(usize, usize)], in_context: &[bool], (start, end): (usize, usize)) -> (i32, i32) {
    let (Some(first), Some(last)) = (in_context.iter().position(|&c| c), in_context.iter().rposition(|&c| c)) else {
        return (CLS, CLS);
    };
    if offsets[first].0 > start || offsets[last].1 < end {
        return (CLS, CLS);
    }
    let mut s = first;
    while s <= last && offsets[s].0 <= start {
        s += 1;
    }
    let mut e = last as i64;
    while e >= first as i64 && offsets[e as usize].1 >= end {
        e -= 1;
    }
    ((s - 1) as i32, (e + 1) as i32)
}

/// Python's `str.isspace`: Unicode White_Space plus the four ASCII information separators.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tokens: [CLS] q [SEP] "The"(0,3) "big"(4,7) "dog"(8,11) [SEP]
    fn offsets() -> (Vec<(usize, usize)>, Vec<bool>) {
        let offsets = vec![(0, 0), (0, 1), (0, 0), (0, 3), (4, 7), (8, 11), (0, 0)];
        let ctx = vec![false, false, false, true, true, true, false];
        (offsets, ctx)
    }

    #[test]
    fn answer_tokens_inside_and_outside_the_window() {
        let (o, c) = offsets();
        assert_eq!(answer_tokens(&o, &c, (4, 7)), (4, 4));
        assert_eq!(answer_tokens(&o, &c, (0, 7)), (3, 4));
        // Ends after the window's last context character: not wholly inside.
        assert_eq!(answer_tokens(&o, &c, (8, 15)), (CLS, CLS));
        // Starts in the last context token: that token, not the separator after it.
        assert_eq!(answer_tokens(&o, &c, (8, 11)), (5, 5));
        // Mid-token answer boundaries widen to whole tokens.
        assert_eq!(answer_tokens(&o, &c, (5, 9)), (4, 5));
    }

    #[test]
    fn no_context_tokens_means_no_answer() {
        let o = vec![(0, 0), (0, 1), (0, 0)];
        assert_eq!(answer_tokens(&o, &[false, false, false], (0, 1)), (CLS, CLS));
    }

    #[test]
    fn question_left_strip_matches_python() {
        assert_eq!(" \u{1f}\u{3000}\tWho?".trim_start_matches(py_space), "Who?");
        assert_eq!("\u{200b}Who?".trim_start_matches(py_space), "\u{200b}Who?");
    }
}
