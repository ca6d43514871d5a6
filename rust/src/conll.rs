//! CoNLL-style text → sentences of (token, tag), in one pass over the lines.
//!
//! One token per line, the token in the first column and its tag in the last (the columns
//! between, POS or chunk tags, are skipped); sentences end at a blank or whitespace-only line;
//! `-DOCSTART-` lines are not tokens (nor sentence ends). Columns are split at tabs when the
//! line has one (tokens may then hold spaces, and each column is trimmed), else at whitespace.
//! A sentence with a line that is not `token … tag` is bad, named by its first such line.

/// The sentences of one text: the good ones, and the bad ones with the line that spoils each.
#[derive(Debug, Default, PartialEq)]
pub struct Sentences<'a> {
    /// Line (1-based) of each good sentence's first token.
    pub lines: Vec<u64>,
    /// Where each good sentence's tokens and tags start, and one past the last.
    pub offsets: Vec<i32>,
    pub tokens: Vec<&'a str>,
    pub tags: Vec<&'a str>,
    /// `(first token line, bad line, the bad line's text)` of each bad sentence.
    pub bad: Vec<(u64, u64, &'a str)>,
}

type Open<'a> = (u64, Option<(u64, &'a str)>);

/// Ends the sentence being read: kept when good, else its tokens dropped and the bad line noted.
fn close<'a>(out: &mut Sentences<'a>, open: &mut Option<Open<'a>>) {
    let start = *out.offsets.last().expect("starts at 0") as usize;
    match open.take() {
        Some((first, None)) => {
            out.lines.push(first);
            out.offsets.push(out.tokens.len() as i32);
        }
        Some((first, Some((n, raw)))) => {
            out.tokens.truncate(start);
            out.tags.truncate(start);
            out.bad.push((first, n, raw));
        }
        None => {}
    }
}

/// `text`: the file decoded, newlines already `\n` (universal newlines).
pub fn sentences(text: &str) -> Sentences<'_> {
    let mut out = Sentences { offsets: vec![0], ..Sentences::default() };
    // The sentence being read: its first token line and its first bad line.
    let mut open: Option<Open<'_>> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i as u64 + 1;
        if raw.trim().is_empty() {
            close(&mut out, &mut open);
            continue;
        }
        let (first, last, count) = fields(raw);
        if first == "-DOCSTART-" {
            continue;
        }
        let sentence = open.get_or_insert((n, None));
        if count < 2 || first.is_empty() || last.is_empty() {
            sentence.1.get_or_insert((n, raw));
        } else if sentence.1.is_none() {
            out.tokens.push(first);
            out.tags.push(last);
        }
    }
    close(&mut out, &mut open);
    out
}

/// A line's first and last column and how many columns it has.
fn fields(line: &str) -> (&str, &str, usize) {
    // Most lines are ASCII columns with single spaces: one pass over the bytes.
    let b = line.as_bytes();
    let (mut spaces, mut first, mut last, mut simple) = (0, 0, 0, b.last() != Some(&b' '));
    for (i, &c) in b.iter().enumerate() {
        match c {
            b' ' => {
                simple &= i > 0 && b[i - 1] != b' ';
                first = if spaces == 0 { i } else { first };
                last = i;
                spaces += 1;
            }
            b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x80.. => simple = false,
            _ => {}
        }
    }
    if simple {
        return if spaces == 0 { (line, line, 1) } else { (&line[..first], &line[last + 1..], spaces + 1) };
    }
    let mut cols: Box<dyn Iterator<Item = &str>> = if plain(line) {
        Box::new(line.split(' '))
    } else if line.contains('\t') {
        Box::new(line.split('\t').map(str::trim))
    } else {
        Box::new(line.split_whitespace())
    };
    let first = cols.next().unwrap_or("");
    let (last, count) = cols.fold((first, 1), |(_, c), x| (x, c + 1));
    (first, last, count)
}

/// Single spaces between columns and no other whitespace: a plain split at spaces.
fn plain(line: &str) -> bool {
    !line.starts_with(' ') && !line.ends_with(' ') && !line.contains("  ") && !line.chars().any(|c| c != ' ' && c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_tags_and_bad_lines() {
        let text = "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n \nPeter\tB-PER\nBlack Jr.\tI-PER\n\t\n\
                    lonely\nx O\n\nz  O\nw\u{a0}O\n";
        let s = sentences(text);
        assert_eq!(s.lines, vec![3, 6, 12]);
        assert_eq!(s.offsets, vec![0, 2, 4, 6]);
        // A tab-separated token keeps its space; a no-break space separates columns.
        assert_eq!(s.tokens, vec!["EU", "rejects", "Peter", "Black Jr.", "z", "w"]);
        assert_eq!(s.tags, vec!["B-ORG", "O", "B-PER", "I-PER", "O", "O"]);
        // One column: the sentence is bad from its first line, named by that line.
        assert_eq!(s.bad, vec![(9, 9, "lonely")]);
    }
}
