//! Text augmentation of the EDA kind (Wei & Zou 2019): synonym replacement, random insertion,
//! random swap, random deletion, applied in that order to one copy of a text.
//!
//! A text is cut into words (runs of letters, digits and marks; each CJK character is a word
//! of its own, as Chinese and Japanese have no spaces) and other tokens (punctuation), each
//! with the whitespace before it; only words are moved, replaced or deleted, and the text is
//! rebuilt with its own spacing. Synonym keys may span several words ("in fact", "喜欢"): the
//! longest key that matches at a word wins. Randomness comes from a per-text key (the row's
//! content hash) and the copy number, never from the batch or the thread, so one seed gives
//! one augmented dataset.

use std::collections::HashMap;
use std::sync::LazyLock;

use rayon::prelude::*;
use regex::Regex;

use crate::dedup::mix;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub synonym: f64,
    pub insert: f64,
    pub swap: f64,
    pub delete: f64,
}

pub struct Augmenter {
    rates: Rates,
    /// Lowercased word sequence joined by U+001F → synonyms.
    synonyms: HashMap<String, Vec<String>>,
    longest_key: usize,
    seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Tok {
    ws: String,
    text: String,
    word: bool,
    cjk: bool,
}

static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?P<cjk>[\p{Han}\p{Hiragana}\p{Katakana}])|(?P<word>[[\w\p{M}]--[\p{Han}\p{Hiragana}\p{Katakana}]]+(?:['’-][[\w\p{M}]--[\p{Han}\p{Hiragana}\p{Katakana}]]+)*)|\S",
    )
    .expect("regex")
});

fn segment(text: &str) -> (Vec<Tok>, String) {
    let mut toks = Vec::new();
    let mut last = 0;
    for c in TOKEN.captures_iter(text) {
        let m = c.get(0).expect("match");
        toks.push(Tok {
            ws: text[last..m.start()].to_string(),
            text: m.as_str().to_string(),
            word: c.name("cjk").is_some() || c.name("word").is_some(),
            cjk: c.name("cjk").is_some(),
        });
        last = m.end();
    }
    (toks, text[last..].to_string())
}

fn is_cjk(word: &str) -> bool {
    let (toks, _) = segment(word);
    !toks.is_empty() && toks.iter().all(|t| t.cjk)
}

fn key_of<'a>(words: impl Iterator<Item = &'a str>) -> String {
    words.map(str::to_lowercase).collect::<Vec<_>>().join("\u{1f}")
}

/// A small, fast, seedable generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

fn count(rate: f64, words: usize) -> usize {
    if rate <= 0.0 || words == 0 {
        0
    } else {
        ((rate * words as f64).round() as usize).max(1)
    }
}

impl Augmenter {
    /// `synonyms`: (word or phrase, its synonyms).
    pub fn new(rates: Rates, synonyms: Vec<(String, Vec<String>)>, seed: u64) -> Self {
        let mut table: HashMap<String, Vec<String>> = HashMap::new();
        let mut longest_key = 0;
        for (key, syns) in synonyms {
            let (toks, _) = segment(&key);
            if toks.is_empty() {
                continue;
            }
            longest_key = longest_key.max(toks.len());
            let entry = table.entry(key_of(toks.iter().map(|t| t.text.as_str()))).or_default();
            entry.extend(syns.into_iter().filter(|s| !s.trim().is_empty() && *s != key));
        }
        Self { rates, synonyms: table, longest_key, seed }
    }

    pub fn augment_all(&self, texts: &[&str], keys: &[u64], copy: u32) -> Vec<String> {
        texts.par_iter().zip(keys).with_min_len(64).map(|(t, &k)| self.augment(t, k, copy)).collect()
    }

    pub fn augment(&self, text: &str, key: u64, copy: u32) -> String {
        let mut rng = Rng(mix(self.seed ^ mix(key ^ mix(u64::from(copy) + 1))));
        let (mut toks, tail) = segment(text);
        let words = toks.iter().filter(|t| t.word).count();
        self.replace_synonyms(&mut toks, count(self.rates.synonym, words), &mut rng);
        self.insert(&mut toks, count(self.rates.insert, words), &mut rng);
        swap(&mut toks, count(self.rates.swap, words), &mut rng);
        if self.rates.delete > 0.0 {
            delete(&mut toks, self.rates.delete, &mut rng);
        }
        let mut out = String::with_capacity(text.len() + 16);
        for t in &toks {
            out.push_str(&t.ws);
            out.push_str(&t.text);
        }
        out.push_str(&tail);
        out
    }

    /// The longest synonym key starting at token `i`: (tokens it spans, its synonyms).
    fn match_at(&self, toks: &[Tok], i: usize) -> Option<(usize, &Vec<String>)> {
        if !toks[i].word {
            return None;
        }
        let mut run = 1;
        while run < self.longest_key && i + run < toks.len() && toks[i + run].word {
            run += 1;
        }
        (1..=run).rev().find_map(|n| {
            self.synonyms.get(&key_of(toks[i..i + n].iter().map(|t| t.text.as_str()))).filter(|s| !s.is_empty()).map(|s| (n, s))
        })
    }

    fn replace_synonyms(&self, toks: &mut Vec<Tok>, n: usize, rng: &mut Rng) {
        if n == 0 || self.synonyms.is_empty() {
            return;
        }
        let mut spots: Vec<usize> = (0..toks.len()).filter(|&i| self.match_at(toks, i).is_some()).collect();
        shuffle(&mut spots, rng);
        let mut taken = vec![false; toks.len()];
        let mut chosen: Vec<(usize, usize, String)> = Vec::new();
        for i in spots {
            if chosen.len() == n {
                break;
            }
            let (len, syns) = self.match_at(toks, i).expect("matched before");
            if taken[i..i + len].iter().any(|&t| t) {
                continue;
            }
            taken[i..i + len].iter_mut().for_each(|t| *t = true);
            chosen.push((i, len, syns[rng.below(syns.len())].clone()));
        }
        chosen.sort_by(|a, b| b.0.cmp(&a.0)); // right to left keeps earlier indices valid
        for (i, len, syn) in chosen {
            let cjk = is_cjk(&syn);
            let ws = toks[i].ws.clone();
            toks.splice(i..i + len, [Tok { ws, text: syn, word: true, cjk }]);
        }
    }

    /// Inserts a synonym of a random word (any word when no table has one) at a random place.
    fn insert(&self, toks: &mut Vec<Tok>, n: usize, rng: &mut Rng) {
        for _ in 0..n {
            let with_syn: Vec<usize> = (0..toks.len()).filter(|&i| self.match_at(toks, i).is_some()).collect();
            let new = if !with_syn.is_empty() {
                let (_, syns) = self.match_at(toks, with_syn[rng.below(with_syn.len())]).expect("matched before");
                syns[rng.below(syns.len())].clone()
            } else {
                let words: Vec<usize> = (0..toks.len()).filter(|&i| toks[i].word).collect();
                if words.is_empty() {
                    return;
                }
                toks[words[rng.below(words.len())]].text.clone()
            };
            let cjk = is_cjk(&new);
            let at = rng.below(toks.len() + 1);
            let sep = |a: bool, b: bool| if a && b { String::new() } else { " ".to_string() };
            let after_prev = if at == 0 { String::new() } else { sep(toks[at - 1].cjk, cjk) };
            // The new word takes the spacing before the word it precedes; punctuation keeps its own.
            let ws = match toks.get_mut(at) {
                Some(next) if next.word || at == 0 => std::mem::replace(&mut next.ws, sep(cjk, next.cjk)),
                _ => after_prev,
            };
            let tok = Tok { ws, text: new, word: true, cjk };
            toks.insert(at, tok);
        }
    }
}

fn shuffle<T>(xs: &mut [T], rng: &mut Rng) {
    for i in (1..xs.len()).rev() {
        xs.swap(i, rng.below(i + 1));
    }
}

fn swap(toks: &mut [Tok], n: usize, rng: &mut Rng) {
    let words: Vec<usize> = (0..toks.len()).filter(|&i| toks[i].word).collect();
    if words.len() < 2 {
        return;
    }
    for _ in 0..n {
        let a = words[rng.below(words.len())];
        let b = words[rng.below(words.len())];
        let (ta, tb) = (std::mem::take(&mut toks[a].text), std::mem::take(&mut toks[b].text));
        let (ca, cb) = (toks[a].cjk, toks[b].cjk);
        (toks[a].text, toks[a].cjk) = (tb, cb);
        (toks[b].text, toks[b].cjk) = (ta, ca);
    }
}

/// Deletes each word with probability `p`, keeping at least one.
fn delete(toks: &mut Vec<Tok>, p: f64, rng: &mut Rng) {
    let words: Vec<usize> = (0..toks.len()).filter(|&i| toks[i].word).collect();
    if words.len() < 2 {
        return;
    }
    let mut gone: Vec<bool> = toks.iter().map(|t| t.word && rng.chance(p)).collect();
    if words.iter().all(|&i| gone[i]) {
        gone[words[rng.below(words.len())]] = false;
    }
    let mut out: Vec<Tok> = Vec::with_capacity(toks.len());
    let mut lead: Option<String> = None; // whitespace of deleted leading tokens
    for (t, g) in toks.drain(..).zip(gone) {
        if g {
            if out.is_empty() && lead.is_none() {
                lead = Some(t.ws);
            }
            continue;
        }
        let mut t = t;
        if out.is_empty() {
            if let Some(ws) = lead.take() {
                t.ws = ws;
            }
        }
        out.push(t);
    }
    *toks = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aug(rates: Rates, syn: &[(&str, &[&str])]) -> Augmenter {
        let table = syn.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect();
        Augmenter::new(rates, table, 7)
    }

    #[test]
    fn segments_words_punctuation_and_cjk() {
        let (toks, tail) = segment("Hi, it's 我很好! ");
        let texts: Vec<&str> = toks.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, vec!["Hi", ",", "it's", "我", "很", "好", "!"]);
        assert_eq!(tail, " ");
        assert!(toks[3].cjk && toks[3].word && !toks[1].word);
    }

    #[test]
    fn no_rate_no_change_and_same_key_same_output() {
        let a = aug(Rates::default(), &[]);
        assert_eq!(a.augment("  keep  this, as is ", 1, 1), "  keep  this, as is ");
        let b = aug(Rates { swap: 0.3, delete: 0.2, ..Default::default() }, &[]);
        let text = "one two three four five six seven eight nine ten";
        assert_eq!(b.augment(text, 42, 1), b.augment(text, 42, 1));
        assert_ne!(b.augment(text, 42, 1), b.augment(text, 42, 2));
    }

    #[test]
    fn synonyms_match_longest_phrase() {
        let a = aug(Rates { synonym: 1.0, ..Default::default() }, &[("in fact", &["indeed"]), ("喜欢", &["喜爱"])]);
        assert_eq!(a.augment("In fact, good.", 3, 1), "indeed, good.");
        assert_eq!(a.augment("我喜欢它", 3, 1), "我喜爱它");
    }

    #[test]
    fn swap_and_delete_keep_the_words() {
        let a = aug(Rates { swap: 0.5, ..Default::default() }, &[]);
        let text = "alpha beta gamma delta";
        let mut out: Vec<&str> = Vec::new();
        let s = a.augment(text, 9, 1);
        out.extend(s.split(' '));
        out.sort();
        assert_eq!(out, vec!["alpha", "beta", "delta", "gamma"]);
        let d = aug(Rates { delete: 0.99, ..Default::default() }, &[]);
        assert_eq!(d.augment(text, 9, 1).split(' ').count(), 1);
    }
}
