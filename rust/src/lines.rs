//! Line-oriented sources (JSON Lines and plain text): split a byte chunk into lines, keep the
//! usable ones, and give every unusable one its 1-based line number and a reason.
//!
//! Validation runs before polars sees the data so that one malformed line goes to quarantine
//! instead of failing the whole file. Cost: one pass over the bytes, plus a JSON parse per
//! line for JSON Lines (parallel over lines, order kept).

use rayon::prelude::*;
use serde_json::Value;

/// What a mapped JSON field must hold. Null or missing is allowed here: the row-level checks
/// that apply to every format (null, empty) run later, in one place.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldKind {
    String,
    Messages,
    Scalar,
}

impl FieldKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "string" => Some(Self::String),
            "messages" => Some(Self::Messages),
            "scalar" => Some(Self::Scalar),
            _ => None,
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct LineScan {
    /// Content of every usable line, in order.
    pub good: Vec<String>,
    pub good_lines: Vec<u64>,
    pub bad_lines: Vec<u64>,
    pub bad_reasons: Vec<String>,
    /// Number of physical lines in the chunk, so the caller can number the next one.
    pub n_lines: u64,
}

/// Scans `buf`, whose first line has number `first_line`. `json = None` treats each line as
/// plain text; `Some(fields)` requires a JSON object whose mapped fields have the given kinds.
/// Blank lines are separators, not rows.
pub fn scan_lines(buf: &[u8], first_line: u64, json: Option<&[(String, FieldKind)]>) -> LineScan {
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            spans.push((start, i));
            start = i + 1;
        }
    }
    if start < buf.len() {
        spans.push((start, buf.len()));
    }
    let checked: Vec<Option<Result<String, String>>> = spans
        .par_iter()
        .enumerate()
        .map(|(i, &(s, e))| {
            let mut line = &buf[s..e];
            if i == 0 && first_line == 1 {
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                return None;
            }
            Some(check_line(line, json))
        })
        .collect();
    let mut scan = LineScan { n_lines: spans.len() as u64, ..Default::default() };
    for (i, item) in checked.into_iter().enumerate() {
        let line_no = first_line + i as u64;
        match item {
            None => {}
            Some(Ok(text)) => {
                scan.good.push(text);
                scan.good_lines.push(line_no);
            }
            Some(Err(reason)) => {
                scan.bad_lines.push(line_no);
                scan.bad_reasons.push(reason);
            }
        }
    }
    scan
}

fn check_line(line: &[u8], json: Option<&[(String, FieldKind)]>) -> Result<String, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!("undecodable bytes: invalid UTF-8 at byte {}", e.valid_up_to())
    })?;
    let Some(fields) = json else {
        return Ok(text.to_owned());
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(obj) = &value else {
        return Err(format!("expected a JSON object, found {}", kind_name(&value)));
    };
    for (name, kind) in fields {
        let Some(v) = obj.get(name) else { continue };
        if v.is_null() {
            continue;
        }
        let ok = match kind {
            FieldKind::String => v.is_string(),
            FieldKind::Scalar => v.is_string() || v.is_number() || v.is_boolean(),
            FieldKind::Messages => return check_messages(name, v).map(|_| text.to_owned()),
        };
        if !ok {
            return Err(format!("column '{name}': expected a string, found {}", kind_name(v)));
        }
    }
    Ok(text.to_owned())
}

fn check_messages(name: &str, v: &Value) -> Result<(), String> {
    let Value::Array(items) = v else {
        return Err(format!("column '{name}': expected a list of messages, found {}", kind_name(v)));
    };
    for (i, m) in items.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!("column '{name}'[{i}]: expected {{role, content}}, found {}", kind_name(m)));
        };
        for key in ["role", "content"] {
            match m.get(key) {
                Some(Value::String(_)) => {}
                Some(Value::Null) if key == "content" => {}
                Some(other) => {
                    return Err(format!("column '{name}'[{i}].{key}: expected a string, found {}", kind_name(other)))
                }
                None => return Err(format!("column '{name}'[{i}]: missing '{key}'")),
            }
        }
    }
    Ok(())
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_skip_blanks_and_flag_bad_utf8() {
        let scan = scan_lines(b"\xEF\xBB\xBFone\r\n\n  \nt\xffwo\nthree", 1, None);
        assert_eq!(scan.good, vec!["one", "three"]);
        assert_eq!(scan.good_lines, vec![1, 5]);
        assert_eq!(scan.bad_lines, vec![4]);
        assert!(scan.bad_reasons[0].starts_with("undecodable bytes"));
        assert_eq!(scan.n_lines, 5);
    }

    #[test]
    fn json_lines_checked_against_mapped_kinds() {
        let fields = vec![
            ("text".to_string(), FieldKind::String),
            ("messages".to_string(), FieldKind::Messages),
        ];
        let buf = b"{\"text\": \"ok\"}\n{bad\n[1]\n{\"text\": 5}\n{\"messages\": [{\"role\": \"user\"}]}\n{\"text\": null}";
        let scan = scan_lines(buf, 10, Some(&fields));
        assert_eq!(scan.good_lines, vec![10, 15]);
        assert_eq!(scan.bad_lines, vec![11, 12, 13, 14]);
        assert!(scan.bad_reasons[0].starts_with("malformed JSON"));
        assert_eq!(scan.bad_reasons[1], "expected a JSON object, found a list");
        assert_eq!(scan.bad_reasons[2], "column 'text': expected a string, found a number");
        assert_eq!(scan.bad_reasons[3], "column 'messages'[0]: missing 'content'");
    }
}
