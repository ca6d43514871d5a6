//! Line-oriented sources (JSON Lines and plain text): split a byte chunk into lines, keep the
//! usable ones, and give every unusable one its 1-based line number and a reason.
//!
//! Validation runs before polars sees the data so that one malformed line goes to quarantine
//! instead of failing the whole file. Cost: one pass over the bytes, plus a JSON parse per
//! line for JSON Lines (parallel over lines, order kept).
//!
//! A line with a conversation is rewritten: every message becomes `{role, content, extra}`
//! whatever its source keys (`role`/`content`, ShareGPT's `from`/`value`), the role named by
//! its canonical name, and `extra` the message's other keys (`name`, `tool_calls`, ...) as one
//! JSON object string, so that polars decodes one schema and the template sees them all.

use std::collections::HashMap;

use rayon::prelude::*;
use serde_json::{Map, Value};

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

/// How the messages of a conversation are read.
#[derive(Clone, Debug, Default)]
pub struct MessageKeys {
    /// The key of the role; `None`: `role`, else `from` (ShareGPT).
    pub role: Option<String>,
    /// The key of the content; `None`: `content`, else `value` (ShareGPT).
    pub content: Option<String>,
    /// Role as found → canonical role; a role not in the table is an unknown role.
    pub roles: HashMap<String, String>,
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
pub fn scan_lines(buf: &[u8], first_line: u64, json: Option<&[(String, FieldKind)]>, keys: &MessageKeys) -> LineScan {
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
            Some(check_line(line, json, keys))
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

fn check_line(line: &[u8], json: Option<&[(String, FieldKind)]>, keys: &MessageKeys) -> Result<String, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!("undecodable bytes: invalid UTF-8 at byte {}", e.valid_up_to())
    })?;
    let Some(fields) = json else {
        return Ok(text.to_owned());
    };
    let value: Value = serde_json::from_str(text).map_err(|e| malformed(&e))?;
    let Value::Object(mut obj) = value else {
        return Err(format!("expected a JSON object, found {}", kind_name(&value)));
    };
    let mut rewrite = false;
    for (name, kind) in fields {
        let Some(v) = obj.get_mut(name) else { continue };
        if v.is_null() {
            continue;
        }
        let ok = match kind {
            FieldKind::String => v.is_string(),
            FieldKind::Scalar => v.is_string() || v.is_number() || v.is_boolean(),
            FieldKind::Messages => {
                *v = normalize_messages(name, v, keys)?;
                rewrite = true;
                true
            }
        };
        if !ok {
            return Err(format!("column '{name}': expected a string, found {}", kind_name(v)));
        }
    }
    if !rewrite {
        return Ok(text.to_owned());
    }
    // Only the mapped fields travel on: polars decodes nothing else.
    let kept: Map<String, Value> =
        fields.iter().filter_map(|(name, _)| obj.remove(name).map(|v| (name.clone(), v))).collect();
    Ok(Value::Object(kept).to_string())
}

/// serde_json's message without its "at line 1 column N" (the line is the file's, which the
/// caller knows), and what an end of input inside a record means here.
fn malformed(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let what = full.rsplit_once(" at line ").map_or(full.as_str(), |(head, _)| head);
    if e.is_eof() {
        return format!(
            "malformed JSON: the line ends inside the record (column {}): truncated, or a record spread over \
             several lines (then the file is JSON, not JSON Lines)",
            e.column()
        );
    }
    format!("malformed JSON at column {}: {what}", e.column())
}

/// A list of messages → `[{role, content, extra}]` (see the module doc).
fn normalize_messages(name: &str, v: &Value, keys: &MessageKeys) -> Result<Value, String> {
    let Value::Array(items) = v else {
        return Err(format!("column '{name}': expected a list of messages, found {}", kind_name(v)));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!("column '{name}'[{i}]: expected {{role, content}}, found {}", kind_name(m)));
        };
        let pick = |given: &Option<String>, first: &'static str, second: &'static str| -> String {
            let key = if !m.contains_key(first) && m.contains_key(second) { second } else { first };
            given.clone().unwrap_or_else(|| key.into())
        };
        let (role_key, content_key) = (pick(&keys.role, "role", "from"), pick(&keys.content, "content", "value"));
        let found = match m.get(&role_key) {
            Some(Value::String(r)) => r.as_str(),
            Some(other) => {
                return Err(format!("column '{name}'[{i}].{role_key}: expected a string, found {}", kind_name(other)))
            }
            None => return Err(format!("column '{name}'[{i}]: missing '{role_key}'")),
        };
        let Some(role) = keys.roles.get(found) else {
            return Err(format!("unknown role '{found}': column '{name}'[{i}]"));
        };
        let mut extra: Map<String, Value> = m
            .iter()
            .filter(|(k, v)| **k != role_key && **k != content_key && !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut content = match m.get(&content_key) {
            Some(Value::String(c)) => Value::String(c.clone()),
            Some(Value::Null) => Value::Null,
            None if extra.contains_key("tool_calls") => Value::Null,
            Some(other) => {
                return Err(format!("column '{name}'[{i}].{content_key}: expected a string, found {}", kind_name(other)))
            }
            None => return Err(format!("column '{name}'[{i}]: missing '{content_key}'")),
        };
        // ShareGPT's `function_call` turn (LLaMA-Factory): the assistant calls a tool, the value
        // holding {"name", "arguments"}; it becomes the OpenAI form templates render.
        if found == "function_call" && role == "assistant" && !extra.contains_key("tool_calls") {
            let call = content.as_str().and_then(|c| serde_json::from_str::<Value>(c).ok()).filter(Value::is_object);
            let Some(call) = call else {
                return Err(format!("column '{name}'[{i}]: a function_call whose {content_key} is not a JSON object"));
            };
            let calls =
                if call.get("function").is_some() { call } else { serde_json::json!({"type": "function", "function": call}) };
            extra.insert("tool_calls".into(), Value::Array(vec![calls]));
            content = Value::Null;
        }
        if let Some(calls) = extra.get("tool_calls") {
            if !calls.is_array() {
                return Err(format!("column '{name}'[{i}].tool_calls: expected a list, found {}", kind_name(calls)));
            }
        }
        let extra = if extra.is_empty() { Value::Null } else { Value::String(Value::Object(extra).to_string()) };
        out.push(serde_json::json!({"role": role, "content": content, "extra": extra}));
    }
    Ok(Value::Array(out))
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

    fn keys() -> MessageKeys {
        let pairs = [("user", "user"), ("human", "user"), ("assistant", "assistant"), ("gpt", "assistant"),
                     ("function_call", "assistant"), ("tool", "tool")];
        MessageKeys { roles: pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(), ..Default::default() }
    }

    #[test]
    fn text_lines_skip_blanks_and_flag_bad_utf8() {
        let scan = scan_lines(b"\xEF\xBB\xBFone\r\n\n  \nt\xffwo\nthree", 1, None, &keys());
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
        let scan = scan_lines(buf, 10, Some(&fields), &keys());
        assert_eq!(scan.good_lines, vec![10, 15]);
        assert_eq!(scan.bad_lines, vec![11, 12, 13, 14]);
        assert!(scan.bad_reasons[0].starts_with("malformed JSON"));
        assert_eq!(scan.bad_reasons[1], "expected a JSON object, found a list");
        assert_eq!(scan.bad_reasons[2], "column 'text': expected a string, found a number");
        assert_eq!(scan.bad_reasons[3], "column 'messages'[0]: missing 'content'");
    }

    #[test]
    fn sharegpt_and_tool_calls_become_one_shape() {
        let fields = vec![("c".to_string(), FieldKind::Messages)];
        let buf = br#"{"c": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {\"z\": 1, \"a\": 2}}"}], "x": 1}
{"c": [{"role": "assistant", "tool_calls": [{"type": "function"}], "name": "bot", "weight": null}]}
{"c": [{"from": "narrator", "value": "x"}]}"#;
        let scan = scan_lines(buf, 1, Some(&fields), &keys());
        assert_eq!(scan.good_lines, vec![1, 2]);
        assert_eq!(
            scan.good[0],
            r#"{"c":[{"role":"user","content":"hi","extra":null},{"role":"assistant","content":null,"extra":"{\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"z\":1,\"a\":2}}}]}"}]}"#
        );
        assert_eq!(
            scan.good[1],
            r#"{"c":[{"role":"assistant","content":null,"extra":"{\"tool_calls\":[{\"type\":\"function\"}],\"name\":\"bot\"}"}]}"#
        );
        assert_eq!(scan.bad_reasons, vec!["unknown role 'narrator': column 'c'[0]"]);
    }

    #[test]
    fn a_cut_line_says_so() {
        let scan = scan_lines(br#"{"text": "a"#, 1, Some(&[("text".to_string(), FieldKind::String)]), &keys());
        assert!(scan.bad_reasons[0].starts_with("malformed JSON: the line ends inside the record"), "{:?}", scan.bad_reasons);
    }
}
