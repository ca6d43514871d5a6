//! Extractive question answering: a question and its context → overlapping windows of at most
//! `max_length` tokens, as a transformers tokenizer builds them when called with
//! `truncation="only_second", stride=doc_stride, return_overflowing_tokens=True,
//! return_offsets_mapping=True` (question first, only the context is cut).
//!
//! Each window keeps what evaluation and serving need to map a predicted token span back onto
//! the context: the character offsets and word ids of its context tokens (-1 for the question
//! and special tokens), and for training the answer's start/end token, or 0 (the CLS position,
//! the "no answer" target) when the answer is absent or not wholly inside the window.

use rayon::prelude::*;
use tokenizers::{Encoding, Token, Tokenizer};

use crate::bpe::FxMap;
use crate::encode::Encoder;
use crate::error::{DataError, Result};
use crate::wordpiece::Pieces;

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
    encoder: &Encoder,
    examples: &[Example],
    max_length: usize,
    stride: usize,
) -> Vec<Result<Vec<Window>>> {
    let wrap = match Wrap::of(encoder.tokenizer()) {
        Ok(w) => w,
        Err(e) => return examples.iter().map(|_| Err(DataError::Tokenizer(e.clone()))).collect(),
    };
    // A context is usually asked several questions (SQuAD: ~6 per paragraph) and is most of the
    // tokens: each distinct context is tokenized once, and its windows cut from that.
    let mut slot: FxMap<&str, usize> = FxMap::default();
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
    let contexts: Vec<std::result::Result<Pieces, String>> =
        distinct.par_iter().with_min_len(8).map(|c| encoder.pieces(c, true).map_err(|e| e.to_string())).collect();
    examples
        .par_iter()
        .zip(which.par_iter())
        .with_min_len(8)
        .map(|(e, &i)| match &contexts[i] {
            Ok(c) => windows(encoder, &wrap, e, c, max_length, stride),
            Err(msg) => Err(DataError::Tokenizer(msg.clone())),
        })
        .collect()
}

/// What the post-processor puts around a (question, context) pair: ids and type ids before the
/// question, between the two, after the context, and the type ids it gives each sequence. The
/// pair post-processors (BERT's, RoBERTa's, templates) wrap sequences whatever they hold, so one
/// pair of sentinel tokens shows where: each window is then assembled by copying slices, where
/// a post-processing call per window (with the tokenizer's clones of the whole context for
/// every overflowing window) cost most of the time.
struct Wrap {
    parts: [(Vec<u32>, Vec<u32>); 3],
    question_type: u32,
    context_type: u32,
}

impl Wrap {
    fn of(tk: &Tokenizer) -> std::result::Result<Self, String> {
        const Q: u32 = u32::MAX - 7;
        const C: u32 = u32::MAX - 8;
        let one = |id: u32, type_id: u32| Encoding::from_tokens(vec![Token::new(id, String::new(), (0, 0))], type_id);
        let enc = tk.post_process(one(Q, 0), Some(one(C, 1)), true).map_err(|e| e.to_string())?;
        let (ids, types) = (enc.get_ids(), enc.get_type_ids());
        let (Some(q), Some(c)) = (ids.iter().position(|&i| i == Q), ids.iter().position(|&i| i == C)) else {
            return Err("the post-processor dropped the question or the context".into());
        };
        if q > c {
            return Err("the post-processor puts the context before the question".into());
        }
        let part = |r: std::ops::Range<usize>| (ids[r.clone()].to_vec(), types[r].to_vec());
        Ok(Wrap { parts: [part(0..q), part(q + 1..c), part(c + 1..ids.len())], question_type: types[q], context_type: types[c] })
    }

    fn added(&self) -> usize {
        self.parts.iter().map(|p| p.0.len()).sum()
    }
}

/// The windows of one example: the question whole, the context cut as the tokenizer's
/// `only_second` truncation with a stride cuts it (windows of `room` tokens starting every
/// `room - stride`, the last one reaching the end).
fn windows(encoder: &Encoder, wrap: &Wrap, ex: &Example, c: &Pieces, max_length: usize, stride: usize) -> Result<Vec<Window>> {
    // Leading spaces would only cost room in the window (run_qa.py strips them the same way).
    let question = ex.question.trim_start_matches(py_space);
    let q = encoder.pieces(question, true)?.ids;
    let added = wrap.added();
    let room = max_length as i64 - added as i64 - q.len() as i64;
    let n = c.ids.len();
    let ranges: Vec<(usize, usize)> = if q.len() + n + added <= max_length {
        vec![(0, n)]
    } else {
        if room <= 0 {
            return Err(DataError::Input(format!(
                "the question has {} tokens, which leaves no room for the context in max_length {max_length}",
                q.len()
            )));
        }
        let room = room as usize;
        if stride >= room {
            return Err(DataError::Input(format!(
                "doc_stride {stride} must be less than the {room} context tokens a window of max_length \
                 {max_length} holds after this {}-token question",
                q.len()
            )));
        }
        let mut out = Vec::new();
        for start in (0..n).step_by(room - stride) {
            let stop = (start + room).min(n);
            out.push((start, stop));
            if stop == n {
                break;
            }
        }
        out
    };
    Ok(ranges.into_iter().map(|r| window(wrap, &q, c, r, ex.answer)).collect())
}

fn window(wrap: &Wrap, q: &[u32], c: &Pieces, (lo, hi): (usize, usize), answer: Option<(usize, usize)>) -> Window {
    let [(pre, pre_t), (mid, mid_t), (post, post_t)] = &wrap.parts;
    let n = pre.len() + q.len() + mid.len() + (hi - lo) + post.len();
    let before = pre.len() + q.len() + mid.len();
    let mut w = Window { ids: Vec::with_capacity(n), type_ids: Vec::with_capacity(n), ..Window::default() };
    w.ids.extend_from_slice(pre);
    w.ids.extend_from_slice(q);
    w.ids.extend_from_slice(mid);
    w.ids.extend_from_slice(&c.ids[lo..hi]);
    w.ids.extend_from_slice(post);
    w.type_ids.extend_from_slice(pre_t);
    w.type_ids.resize(pre.len() + q.len(), wrap.question_type);
    w.type_ids.extend_from_slice(mid_t);
    w.type_ids.resize(before + hi - lo, wrap.context_type);
    w.type_ids.extend_from_slice(post_t);
    let offsets = &c.offsets[lo..hi];
    let pad = |v: &mut Vec<i32>, inner: &mut dyn Iterator<Item = i32>| {
        v.resize(before, -1);
        v.extend(inner);
        v.resize(n, -1);
    };
    pad(&mut w.starts, &mut offsets.iter().map(|o| o.0 as i32));
    pad(&mut w.ends, &mut offsets.iter().map(|o| o.1 as i32));
    pad(&mut w.words, &mut c.words[lo..hi].iter().map(|x| x.map_or(-1, |x| x as i32)));
    let mut in_context = vec![false; n];
    in_context[before..before + hi - lo].fill(true);
    let mut all = vec![(0, 0); n];
    all[before..before + hi - lo].copy_from_slice(offsets);
    w.answer = answer.map_or((CLS, CLS), |a| answer_tokens(&all, &in_context, a));
    w
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
