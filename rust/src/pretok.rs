//! The pre-tokenizer regexes of the byte-level BPE families, as hand-written scanners.
//!
//! `tokenizers` runs these patterns through Oniguruma, a backtracking engine, once per piece;
//! the scanners below decide each alternative in the pattern's order from one character of
//! look-ahead, which is what the backtracking computes for these particular patterns. Character
//! classes (`\p{L}`, `\p{N}`, `\s`) come from a table filled by Oniguruma itself, through the
//! same regex type the tokenizers crate uses, so the Unicode version cannot drift between the
//! two. The tests compare every split against that engine on random text.

use std::sync::OnceLock;

use tokenizers::utils::SysRegex;

/// GPT-2's pattern, the `ByteLevel` pre-tokenizer's default.
pub const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama-3's `Split` pattern.
pub const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's `Split` pattern: Llama-3's with single digits.
pub const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    Gpt2,
    /// Llama-3 and Qwen2: case-insensitive contractions, one leading non-letter joins a word,
    /// numbers in runs of at most `max_digits`, newlines kept with the whitespace before them.
    Llama3 { max_digits: usize },
}

impl Pattern {
    pub fn from_regex(re: &str) -> Option<Self> {
        match re {
            GPT2 => Some(Self::Gpt2),
            LLAMA3 => Some(Self::Llama3 { max_digits: 3 }),
            QWEN2 => Some(Self::Llama3 { max_digits: 1 }),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn regex(self) -> &'static str {
        match self {
            Self::Gpt2 => GPT2,
            Self::Llama3 { max_digits: 3 } => LLAMA3,
            Self::Llama3 { .. } => QWEN2,
        }
    }
}

const L: u8 = 1;
const N: u8 = 2;
const S: u8 = 4;

/// `\p{L}`, `\p{N}` and `\s` bits for every code point, as Oniguruma classifies them.
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let all: String = (0..0x11_0000u32).filter_map(char::from_u32).collect();
        let mut t = vec![0u8; 0x11_0000];
        for (bit, pat) in [(L, r"\p{L}+"), (N, r"\p{N}+"), (S, r"\s+")] {
            let re = SysRegex::new(pat).expect("a valid class");
            for (s, e) in re.find_iter(&all) {
                for c in all[s..e].chars() {
                    t[c as usize] |= bit;
                }
            }
        }
        t
    })
}

/// Splits `text` into pieces (byte ranges, in order, covering it) as the pattern's `find_iter`.
pub struct Scanner {
    pattern: Pattern,
    table: &'static [u8],
}

impl Scanner {
    pub fn new(pattern: Pattern) -> Self {
        Self { pattern, table: table() }
    }

    /// The class bits and byte length of the character at `i` (0 and 0 past the end).
    #[inline]
    fn at(&self, s: &[u8], i: usize) -> (u8, usize) {
        let Some(&b) = s.get(i) else { return (0, 0) };
        if b < 0x80 {
            return (self.table[b as usize], 1);
        }
        let len = if b >= 0xF0 { 4 } else if b >= 0xE0 { 3 } else { 2 };
        // SAFETY: `s` is a str's bytes and `i` a char boundary, so `len` bytes form one char.
        let c = unsafe { std::str::from_utf8_unchecked(&s[i..i + len]) }.chars().next().unwrap_or('\0');
        (self.table[c as usize], len)
    }

    /// End of the run of characters from `i` whose class satisfies `keep`, at most `max` of them.
    #[inline]
    fn run(&self, s: &[u8], mut i: usize, max: usize, keep: impl Fn(u8) -> bool) -> usize {
        let mut n = 0;
        while n < max {
            let (c, len) = self.at(s, i);
            if len == 0 || !keep(c) {
                break;
            }
            i += len;
            n += 1;
        }
        i
    }

    /// Calls `f(start, end)` for each piece.
    pub fn split(&self, text: &str, mut f: impl FnMut(usize, usize)) {
        let s = text.as_bytes();
        let mut i = 0;
        while i < s.len() {
            let end = match self.pattern {
                Pattern::Gpt2 => self.gpt2(s, i),
                Pattern::Llama3 { max_digits } => self.llama3(s, i, max_digits),
            };
            f(i, end);
            i = end;
        }
    }

    fn gpt2(&self, s: &[u8], i: usize) -> usize {
        if let Some(end) = contraction(s, i, false) {
            return end;
        }
        let (c, len) = self.at(s, i);
        // ` ?X+`: a single ASCII space joins the run of one class that follows it.
        let (c, from) = if s[i] == b' ' {
            let (n, nlen) = self.at(s, i + 1);
            if nlen > 0 && n & S == 0 { (n, i + 1 + nlen) } else { (c, i + len) }
        } else {
            (c, i + len)
        };
        if c & L != 0 {
            self.run(s, from, usize::MAX, |k| k & L != 0)
        } else if c & N != 0 {
            self.run(s, from, usize::MAX, |k| k & N != 0)
        } else if c & S == 0 {
            self.run(s, from, usize::MAX, |k| k & (L | N | S) == 0)
        } else {
            self.whitespace(s, i, len)
        }
    }

    fn llama3(&self, s: &[u8], i: usize, max_digits: usize) -> usize {
        if let Some(end) = contraction(s, i, true) {
            return end;
        }
        let (c, len) = self.at(s, i);
        let letters = |from| self.run(s, from, usize::MAX, |k| k & L != 0);
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if c & L != 0 {
            return letters(i + len);
        }
        let (n, nlen) = self.at(s, i + len);
        let newline = s[i] == b'\r' || s[i] == b'\n';
        if !newline && c & N == 0 && nlen > 0 && n & L != 0 {
            return letters(i + len + nlen);
        }
        // `\p{N}{1,3}` (Qwen2: `\p{N}`)
        if c & N != 0 {
            return self.run(s, i, max_digits, |k| k & N != 0);
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let other = |k: u8| k & (L | N | S) == 0;
        let from = if c & S == 0 {
            Some(i + len)
        } else if s[i] == b' ' && nlen > 0 && other(n) {
            Some(i + 1 + nlen)
        } else {
            None
        };
        if let Some(from) = from {
            let end = self.run(s, from, usize::MAX, other);
            return end + s[end..].iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        }
        // `\s*[\r\n]+`: the whitespace run up to its last line break.
        let run_end = self.run(s, i, usize::MAX, |k| k & S != 0);
        if let Some(last) = s[i..run_end].iter().rposition(|&b| b == b'\r' || b == b'\n') {
            return i + last + 1;
        }
        self.whitespace(s, i, len)
    }

    /// `\s+(?!\S)|\s+` at a whitespace character of `len` bytes: the run, less its last
    /// character when a non-space follows (that one starts the next piece), or a lone character.
    fn whitespace(&self, s: &[u8], i: usize, len: usize) -> usize {
        let mut last = i;
        let mut j = i;
        loop {
            let (c, l) = self.at(s, j);
            if l == 0 || c & S == 0 {
                break;
            }
            last = j;
            j += l;
        }
        if j == s.len() {
            j
        } else if last > i {
            last
        } else {
            i + len
        }
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at `i`, optionally case-insensitive (Oniguruma folds `ſ` to `s`).
fn contraction(s: &[u8], i: usize, fold: bool) -> Option<usize> {
    if s[i] != b'\'' {
        return None;
    }
    let lower = |k: usize| s.get(i + k).map(|&b| if fold { b.to_ascii_lowercase() } else { b });
    match lower(1)? {
        b's' | b't' | b'm' | b'd' => Some(i + 2),
        b'r' | b'v' if lower(2) == Some(b'e') => Some(i + 3),
        b'l' if lower(2) == Some(b'l') => Some(i + 3),
        0xC5 if fold && s.get(i + 2) == Some(&0xBF) => Some(i + 3), // U+017F LATIN SMALL LETTER LONG S
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Characters of every class the patterns distinguish, including the awkward ones.
    const ALPHABET: &[&str] = &[
        "a", "Z", "s", "S", "t", "T", "r", "e", "E", "v", "l", "L", "m", "d", "D", "ſ", "'", " ", " ", " ", "\t", "\n",
        "\r", "\u{a0}", "\u{2028}", "\u{3000}", "\u{85}", "\u{b}", "\u{c}", "0", "7", "٣", "²", "Ⅻ", "½", ".", ",", "!",
        "-", "(", "\"", "é", "e\u{301}", "\u{301}", "ß", "漢", "か", "한", "🙂", "👩\u{200d}👧", "\u{200b}", "\u{feff}",
        "\0", "K", "\u{212a}", "ǅ", "ʰ", "ﬅ", "ﬆ",
    ];

    fn random_text(seed: &mut u64, len: usize) -> String {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ALPHABET[(*seed % ALPHABET.len() as u64) as usize]
            })
            .collect()
    }

    #[test]
    fn splits_match_oniguruma() {
        for pattern in [Pattern::Gpt2, Pattern::Llama3 { max_digits: 3 }, Pattern::Llama3 { max_digits: 1 }] {
            let re = SysRegex::new(pattern.regex()).unwrap();
            let scanner = Scanner::new(pattern);
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            for n in 0..20_000 {
                let text = random_text(&mut seed, n % 40);
                let want: Vec<(usize, usize)> = re.find_iter(&text).collect();
                let mut got = Vec::new();
                scanner.split(&text, |a, b| got.push((a, b)));
                assert_eq!(got, want, "{pattern:?} on {text:?}");
            }
        }
    }

    #[test]
    fn known_splits() {
        let pieces = |p, t: &str| {
            let mut v = Vec::new();
            Scanner::new(p).split(t, |a, b| v.push(t[a..b].to_string()));
            v
        };
        assert_eq!(pieces(Pattern::Gpt2, "I'm  here 123!\n"), ["I", "'m", " ", " here", " 123", "!", "\n"]);
        assert_eq!(pieces(Pattern::Llama3 { max_digits: 3 }, "WE'RE 12345 (ok)\n\n x"),
                   ["WE", "'RE", " ", "123", "45", " (", "ok", ")\n\n", " x"]);
    }
}
