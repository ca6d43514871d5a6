//! Text cleaning: the rules of `[data.clean]` that rewrite or drop a text, in a fixed order.
//!
//! Order: strip HTML → control characters → Unicode normalization → regex replacements →
//! whitespace collapsing (control characters go before normalizing, so that a removed one
//! cannot leave two characters that normalization would have composed: cleaning twice gives
//! what cleaning once gave); then drop rules are tried on the result, so what is checked is what
//! will be trained. Each transform reports whether it changed the text, so the funnel can
//! count every rule. Cost: one pass per enabled rule; a text no rule changes is not copied.

use std::borrow::Cow;
use std::sync::LazyLock;

use rayon::prelude::*;
use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{DataError, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Form {
    Nfc,
    Nfkc,
}

/// Bit per transform, in `Cleaned::changed`.
pub const HTML: u8 = 1;
pub const NORMALIZE: u8 = 2;
pub const CONTROL: u8 = 4;
pub const REPLACE: u8 = 8;
pub const WHITESPACE: u8 = 16;

#[derive(Debug, Default)]
pub struct Rules {
    pub strip_html: bool,
    pub normalize: Option<Form>,
    pub remove_control: bool,
    pub replace: Vec<(String, String)>,
    pub collapse_whitespace: bool,
    pub drop_if_matches: Vec<String>,
}

pub struct Cleaner {
    rules: Rules,
    replace: Vec<(Regex, String)>,
    drop: Vec<Regex>,
}

#[derive(Debug, PartialEq)]
pub struct Cleaned {
    pub text: String,
    /// Which transforms changed the text (bits above).
    pub changed: u8,
    /// Index of the first drop rule that matched.
    pub dropped_by: Option<u32>,
}

pub fn compile(pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|e| DataError::Input(e.to_string()))
}

impl Cleaner {
    pub fn new(rules: Rules) -> Result<Self> {
        let replace = rules.replace.iter().map(|(p, w)| Ok((compile(p)?, w.clone()))).collect::<Result<_>>()?;
        let drop = rules.drop_if_matches.iter().map(|p| compile(p)).collect::<Result<_>>()?;
        Ok(Self { rules, replace, drop })
    }

    pub fn clean_all(&self, texts: &[&str]) -> Vec<Cleaned> {
        texts.par_iter().with_min_len(64).map(|t| self.clean(t)).collect()
    }

    pub fn clean(&self, text: &str) -> Cleaned {
        let r = &self.rules;
        let mut changed = 0u8;
        let mut s: Cow<str> = Cow::Borrowed(text);
        if r.strip_html {
            s = apply(s, HTML, &mut changed, strip_html);
        }
        if r.remove_control {
            s = apply(s, CONTROL, &mut changed, remove_control);
        }
        if let Some(form) = r.normalize {
            s = apply(s, NORMALIZE, &mut changed, |t| normalize(t, form));
        }
        if !self.replace.is_empty() {
            s = apply(s, REPLACE, &mut changed, |t| {
                let mut out = Cow::Borrowed(t);
                for (re, with) in &self.replace {
                    if let Cow::Owned(o) = re.replace_all(&out, with.as_str()) {
                        out = Cow::Owned(o);
                    }
                }
                matches!(out, Cow::Owned(_)).then(|| out.into_owned())
            });
        }
        if r.collapse_whitespace {
            s = apply(s, WHITESPACE, &mut changed, collapse_whitespace);
        }
        let dropped_by = self.drop.iter().position(|re| re.is_match(&s)).map(|i| i as u32);
        Cleaned { text: s.into_owned(), changed, dropped_by }
    }
}

/// Runs one transform; `f` returns `None` when it has nothing to do.
fn apply<'t>(s: Cow<'t, str>, bit: u8, changed: &mut u8, f: impl Fn(&str) -> Option<String>) -> Cow<'t, str> {
    match f(&s) {
        Some(out) if out != *s => {
            *changed |= bit;
            Cow::Owned(out)
        }
        _ => s,
    }
}

/// Whitespace as Python's `str.split()` sees it: Unicode White_Space plus the information
/// separators U+001C..U+001F.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `" ".join(text.split())`: runs of whitespace become one space, ends trimmed.
pub fn collapse_whitespace(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    Some(out)
}

fn normalize(text: &str, form: Form) -> Option<String> {
    let quick = match form {
        Form::Nfc => unicode_normalization::is_nfc_quick(text.chars()),
        Form::Nfkc => unicode_normalization::is_nfkc_quick(text.chars()),
    };
    if quick == unicode_normalization::IsNormalized::Yes {
        return None;
    }
    Some(match form {
        Form::Nfc => text.nfc().collect(),
        Form::Nfkc => text.nfkc().collect(),
    })
}

/// Removes control characters (Unicode Cc) except tab, newline and carriage return.
fn remove_control(text: &str) -> Option<String> {
    let bad = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    text.contains(bad).then(|| text.chars().filter(|&c| !bad(c)).collect())
}

static DROP_BLOCKS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?is)<!--.*?-->|<script\b.*?</script\s*>|<style\b.*?</style\s*>").expect("regex"));
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"</?([A-Za-z][A-Za-z0-9-]*)\b[^>]*>|<![^>]*>").expect("regex"));
static NUMERIC_REF: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));?").expect("regex"));
static BLANK_LINES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[ \t]*\n[ \t\n]*").expect("regex"));

/// Tags go, with the content of comments, scripts and styles; a block-level tag (or `<br>`)
/// becomes a line break so that paragraphs do not run together; then entities are decoded as
/// HTML5 (and Python's `html.unescape`) decode text. Only tags are stripped: a `<` that does
/// not open a tag (`a < b`) stays.
fn strip_html(text: &str) -> Option<String> {
    if !text.contains('<') && !text.contains('&') {
        return None;
    }
    let no_blocks = DROP_BLOCKS.replace_all(text, "");
    let mut breaks = false;
    let no_tags = TAG.replace_all(&no_blocks, |c: &regex::Captures| {
        let block = c.get(1).is_some_and(|name| is_block(name.as_str()));
        breaks |= block;
        if block { "\n" } else { "" }
    });
    let no_tags = if no_tags.contains("&#") {
        NUMERIC_REF.replace_all(&no_tags, |c: &regex::Captures| {
            let code = match (c.get(1), c.get(2)) {
                (Some(hex), _) => u32::from_str_radix(hex.as_str(), 16).ok(),
                (_, Some(dec)) => dec.as_str().parse().ok(),
                _ => None,
            };
            if code.is_some_and(dropped_by_python) { String::new() } else { c[0].to_string() }
        })
    } else {
        no_tags
    };
    let decoded = htmlize::unescape(no_tags.as_ref()).into_owned();
    Some(if breaks { BLANK_LINES.replace_all(decoded.trim(), "\n").into_owned() } else { decoded })
}

/// Character references that Python's `html.unescape` decodes to nothing where HTML5 keeps
/// the character: C0 controls but tab, newline, form feed and carriage return, DEL, and the
/// noncharacters. (C1 references are remapped through windows-1252 by both.)
fn dropped_by_python(code: u32) -> bool {
    matches!(code, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef) || (code & 0xfffe == 0xfffe && code <= 0x10ffff)
}

fn is_block(name: &str) -> bool {
    const BLOCK: &[&str] = &[
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure", "footer",
        "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
        "table", "td", "th", "tr", "ul",
    ];
    BLOCK.iter().any(|b| b.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleaner(rules: Rules) -> Cleaner {
        Cleaner::new(rules).unwrap()
    }

    #[test]
    fn html_tags_entities_and_blocks() {
        assert_eq!(strip_html("<b>Great</b> &amp; cheap&nbsp;!").unwrap(), "Great & cheap\u{a0}!");
        assert_eq!(strip_html("<p>one</p><p>two</p>").unwrap(), "one\ntwo");
        assert_eq!(strip_html("x<script>alert(1)</script>y<!-- c -->z").unwrap(), "xyz");
        assert_eq!(strip_html("a < b &lt c").unwrap(), "a < b < c");
        assert_eq!(strip_html("plain"), None);
        assert_eq!(strip_html("a&#1;b&#x0b;c&#xfdd0;d&#128;&#x81;").unwrap(), "abcd€\u{81}");
    }

    #[test]
    fn rules_apply_in_order_and_report_changes() {
        let c = cleaner(Rules {
            strip_html: true,
            normalize: Some(Form::Nfkc),
            remove_control: true,
            replace: vec![(r"\S+@\S+\.\w+".into(), "<email>".into())],
            collapse_whitespace: true,
            drop_if_matches: vec!["(?i)lorem".into(), "email".into()],
        });
        let out = c.clean("<i>ｍail</i>\u{7}  me at a@b.com\n");
        assert_eq!(out.text, "mail me at <email>");
        assert_eq!(out.changed, HTML | NORMALIZE | CONTROL | REPLACE | WHITESPACE);
        assert_eq!(out.dropped_by, Some(1));
        let same = c.clean("nothing to do");
        assert_eq!((same.changed, same.dropped_by), (0, None));
        assert_eq!(c.clean("LOREM ipsum").dropped_by, Some(0));
    }

    #[test]
    fn whitespace_like_python_split() {
        assert_eq!(collapse_whitespace(" a\t\n b\u{a0}c\u{1f}d ").unwrap(), "a b c d");
    }

    #[test]
    fn bad_pattern_is_an_input_error() {
        assert!(Cleaner::new(Rules { drop_if_matches: vec!["(".into()], ..Default::default() }).is_err());
    }
}
