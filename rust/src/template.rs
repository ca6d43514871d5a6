//! Chat templates rendered with minijinja exactly as `transformers` renders them with Jinja2:
//! `trim_blocks` and `lstrip_blocks` on, loop controls, Python string methods, HF's `tojson`,
//! `raise_exception` and `strftime_now`, the special tokens in the context; the generation prompt
//! only for inference prompts (`render_prompt`), never for training text.
//!
//! Completion-only labels need the byte span of every assistant message in the rendered text.
//! We render twice: once with the real contents, once with each content replaced by a unique
//! sentinel. The text between sentinels is the template's own scaffolding; substituting the
//! real contents back must give the real render exactly (checked), and then every span is known
//! without searching for the content, which could also occur in an earlier turn.
//!
//! An assistant turn that calls tools is labelled whole, its content and the calls the template
//! writes: rendered on its own after the turns before it, once as it is and once with a
//! sentinel for a content and no calls, the text before and after the sentinel is the turn's
//! scaffolding, and what the real render holds between them is the turn.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use crate::error::{DataError, Result};

/// Templates shipped with ftc, for models without one.
pub fn builtin(name: &str) -> Option<&'static str> {
    match name {
        "chatml" => Some(concat!(
            "{% for message in messages %}",
            "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}",
            "{% endfor %}",
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        )),
        "alpaca" => Some(concat!(
            "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}",
            "{% set messages = messages[1:] %}",
            "{% else %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}{% endif %}",
            "{% for message in messages %}",
            "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}",
            "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}",
            "{% endif %}{% endfor %}",
            "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
        )),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub role: &'a str,
    /// `None` for a message without content (transformers drops such keys before rendering).
    pub content: Option<&'a str>,
    /// The message's other keys (`name`, `tool_calls`, `tool_call_id`, ...) as a JSON object,
    /// given to the template as they are.
    pub extra: Option<&'a str>,
}

impl Message<'_> {
    fn calls_tools(&self) -> bool {
        self.role == "assistant" && self.extra.is_some_and(|e| e.contains("\"tool_calls\""))
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Special tokens (`bos_token`, `eos_token`, ...) passed to the template as variables.
    special: Vec<(String, String)>,
}

const SENTINEL_OPEN: char = '\u{F8F0}';
const SENTINEL_CLOSE: char = '\u{F8F1}';

impl ChatTemplate {
    pub fn new(source: &str, special: Vec<(String, String)>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(false)
                .build()
                .map_err(|e| DataError::Template(e.to_string()))?,
        );
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_template_owned("chat", strip_generation_tags(source))
            .map_err(|e| DataError::Template(describe(&e)))?;
        Ok(Self { env, special })
    }

    pub fn render(&self, messages: &[Message]) -> Result<String> {
        self.render_with(messages, false)
    }

    /// The prompt a model completes at inference: the conversation plus the assistant header.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String> {
        self.render_with(messages, true)
    }

    fn render_with(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Value> = messages.iter().map(message_value).collect::<Result<_>>()?;
        let mut ctx: Vec<(Value, Value)> = self
            .special
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect();
        ctx.push((Value::from("messages"), Value::from(msgs)));
        ctx.push((Value::from("add_generation_prompt"), Value::from(add_generation_prompt)));
        ctx.push((Value::from("tools"), Value::from(())));
        ctx.push((Value::from("documents"), Value::from(())));
        let tmpl = self.env.get_template("chat").expect("registered in new()");
        tmpl.render(Value::from_pairs(ctx)).map_err(|e| DataError::Template(describe(&e)))
    }

    /// Renders `messages` and returns the text with the byte span of each assistant content
    /// (of each assistant turn, for one that calls tools).
    pub fn render_with_spans(&self, messages: &[Message]) -> Result<(String, Vec<(usize, usize)>)> {
        let text = self.render(messages)?;
        let sentinels: Vec<String> =
            (0..messages.len()).map(|i| format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}")).collect();
        let marked: Vec<Message> = messages
            .iter()
            .zip(&sentinels)
            .map(|(m, s)| Message { content: m.content.map(|_| s.as_str()), ..*m })
            .collect();
        let skeleton = self.render(&marked)?;
        // A tool's answer the template leaves out would vanish from training without a word.
        let dropped = |(m, s): &(&Message, &String)| m.role == "tool" && m.content.is_some() && !skeleton.contains(s.as_str());
        if messages.iter().zip(&sentinels).any(|pair| dropped(&pair)) {
            return Err(DataError::Template("the template does not render 'tool' messages".into()));
        }
        // Templates that trim contents render the stripped text; try verbatim first.
        for strip in [false, true] {
            if let Some(mut spans) = substitute(&skeleton, &sentinels, messages, &text, strip) {
                for (i, m) in messages.iter().enumerate() {
                    if m.calls_tools() {
                        self.tool_turn_span(messages, i, &text, &mut spans)?;
                    }
                }
                return Ok((text, spans));
            }
        }
        Err(DataError::Template(
            "cannot locate the assistant turns: the template changes or drops message contents".into(),
        ))
    }

    /// The span of assistant turn `i`, content and tool calls, put in place of its content's.
    fn tool_turn_span(&self, messages: &[Message], i: usize, text: &str, spans: &mut Vec<(usize, usize)>) -> Result<()> {
        let sentinel = format!("{SENTINEL_OPEN}{SENTINEL_CLOSE}");
        let turn = self.render(&messages[..=i])?;
        let mut plain: Vec<Message> = messages[..i].to_vec();
        plain.push(Message { role: "assistant", content: Some(&sentinel), extra: None });
        let bare = self.render(&plain)?;
        let located = bare.find(&sentinel).and_then(|at| {
            let (head, tail) = (&bare[..at], &bare[at + sentinel.len()..]);
            let end = turn.len().checked_sub(tail.len())?;
            let fits = end >= head.len() && turn.starts_with(head) && turn.ends_with(tail);
            (fits && text.get(..end) == turn.get(..end)).then_some((head.len(), end))
        });
        let Some((start, end)) = located else {
            return Err(DataError::Template(format!(
                "cannot locate the tool calls of message {i}: the template renders a turn differently once \
                 the conversation goes on"
            )));
        };
        let body = &text[start..end];
        if body.trim() == messages[i].content.unwrap_or("").trim() {
            return Err(DataError::Template(format!("the template does not render tool calls (message {i})")));
        }
        spans.retain(|&(s, e)| e <= start || s >= end);
        let at = spans.partition_point(|&(s, _)| s < start);
        spans.insert(at, (start, end));
        Ok(())
    }
}

/// A message as the template sees it: role, content when there is one, then its other keys.
fn message_value(m: &Message) -> Result<Value> {
    let mut pairs = vec![(Value::from("role"), Value::from(m.role))];
    if let Some(c) = m.content {
        pairs.push((Value::from("content"), Value::from(c)));
    }
    if let Some(extra) = m.extra {
        let parsed: serde_json::Value =
            serde_json::from_str(extra).map_err(|e| DataError::Input(format!("message keys {extra:?}: {e}")))?;
        if let serde_json::Value::Object(map) = parsed {
            for (k, v) in map {
                if k != "role" && k != "content" && !v.is_null() {
                    pairs.push((Value::from(k), json_value(v)));
                }
            }
        }
    }
    Ok(Value::from_pairs(pairs))
}

/// JSON as Jinja values, as `json.loads` gives them to transformers (keys in file order).
fn json_value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (_, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s),
        J::Array(items) => Value::from(items.into_iter().map(json_value).collect::<Vec<_>>()),
        J::Object(map) => Value::from_pairs(map.into_iter().map(|(k, v)| (Value::from(k), json_value(v)))),
    }
}

/// Rebuilds the real render from the skeleton; returns assistant spans if it matches `text`.
fn substitute(
    skeleton: &str,
    sentinels: &[String],
    messages: &[Message],
    text: &str,
    strip: bool,
) -> Option<Vec<(usize, usize)>> {
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let mut rest = skeleton;
    let mut next = 0; // sentinels must appear once each, in message order
    while let Some(pos) = rest.find(SENTINEL_OPEN) {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        let i = (next..messages.len()).find(|&i| after.starts_with(sentinels[i].as_str()))?;
        if i != next && messages[next..i].iter().any(|m| m.role == "assistant" && m.content.is_some()) {
            return None; // an assistant turn was dropped by the template
        }
        let content = messages[i].content.unwrap_or("");
        let content = if strip { content.trim() } else { content };
        let start = out.len();
        out.push_str(content);
        if messages[i].role == "assistant" {
            spans.push((start, out.len()));
        }
        rest = &after[sentinels[i].len()..];
        next = i + 1;
        if !text.starts_with(out.as_str()) {
            return None;
        }
    }
    out.push_str(rest);
    (out == text).then_some(spans)
}

/// HF's chat templates may wrap assistant turns in `{% generation %}` ... `{% endgeneration %}`
/// (an extension only transformers knows); they render their body unchanged.
fn strip_generation_tags(source: &str) -> String {
    let re = regex::Regex::new(r"\{%-?\s*(?:end)?generation\s*-?%\}").expect("valid regex");
    re.replace_all(source, "").into_owned()
}

fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        msg.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    msg
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, not minijinja's HTML-safe variant.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or("").to_owned()),
        },
    };
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none()) {
        Some(v) => (
            v.get_item(&Value::from(0))?.as_str().unwrap_or(",").to_owned(),
            v.get_item(&Value::from(1))?.as_str().unwrap_or(":").to_owned(),
        ),
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let fmt = JsonFmt { indent, item_sep, key_sep, sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    fmt.write(value, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonFmt {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonFmt {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, v: &Value, depth: usize, out: &mut String) -> std::result::Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if v.is_integer() {
                    out.push_str(&v.to_string());
                } else {
                    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                    out.push_str(&python_float(f));
                }
            }
            ValueKind::String => write_json_str(v.as_str().unwrap_or(""), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.write_seq(items.iter().map(|x| (None, x.clone())), items.is_empty(), '[', ']', depth, out)?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by(|a, b| a.to_string().cmp(&b.to_string()));
                }
                let pairs: Vec<(Option<Value>, Value)> = keys
                    .into_iter()
                    .map(|k| {
                        let val = v.get_item(&k).unwrap_or_default();
                        (Some(k), val)
                    })
                    .collect();
                let empty = pairs.is_empty();
                self.write_seq(pairs.into_iter(), empty, '{', '}', depth, out)?;
            }
            _ => write_json_str(&v.to_string(), out),
        }
        Ok(())
    }

    fn write_seq(
        &self,
        items: impl Iterator<Item = (Option<Value>, Value)>,
        empty: bool,
        open: char,
        close: char,
        depth: usize,
        out: &mut String,
    ) -> std::result::Result<(), Error> {
        out.push(open);
        if empty {
            out.push(close);
            return Ok(());
        }
        for (i, (key, val)) in items.enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(depth + 1, out);
            if let Some(k) = key {
                match k.as_str() {
                    Some(s) => write_json_str(s, out),
                    None => write_json_str(&k.to_string(), out),
                }
                out.push_str(&self.key_sep);
            }
            self.write(&val, depth + 1, out)?;
        }
        self.newline(depth, out);
        out.push(close);
        Ok(())
    }
}

/// Python's `repr(float)` for the values JSON can hold.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Message<'a>> {
        pairs.iter().map(|&(role, c)| Message { role, content: Some(c), extra: None }).collect()
    }

    #[test]
    fn chatml_spans_cover_assistant_content_only() {
        let t = ChatTemplate::new(builtin("chatml").unwrap(), vec![]).unwrap();
        // The assistant answer also occurs inside the user turn: spans must not be fooled.
        let m = msgs(&[("system", "Be brief."), ("user", "say hi"), ("assistant", "hi"), ("user", "again"), ("assistant", "hi")]);
        let (text, spans) = t.render_with_spans(&m).unwrap();
        assert!(text.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
        assert_eq!(spans.len(), 2);
        for (s, e) in &spans {
            assert_eq!(&text[*s..*e], "hi");
            assert!(text[*e..].starts_with("<|im_end|>"));
        }
    }

    #[test]
    fn prompt_adds_the_generation_header_training_text_does_not() {
        let t = ChatTemplate::new(builtin("chatml").unwrap(), vec![]).unwrap();
        let m = msgs(&[("user", "hi")]);
        assert_eq!(t.render(&m).unwrap(), "<|im_start|>user\nhi<|im_end|>\n");
        assert_eq!(t.render_prompt(&m).unwrap(), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn trimming_template_still_located() {
        let src = "{% for m in messages %}[{{ m.role }}]{{ m.content | trim }}\n{% endfor %}";
        let t = ChatTemplate::new(src, vec![]).unwrap();
        let (text, spans) = t.render_with_spans(&msgs(&[("user", " q "), ("assistant", "  a b ")])).unwrap();
        assert_eq!(text, "[user]q\n[assistant]a b\n");
        assert_eq!(&text[spans[0].0..spans[0].1], "a b");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ messages | tojson }}|{{ {'b': 1.0, 'a': [true, none]} | tojson(indent=2, sort_keys=true) }}", vec![]).unwrap();
        let out = t.render(&msgs(&[("user", "é \"<x>\"\n")])).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"é \\\"<x>\\\"\\n\"}]|{\n  \"a\": [\n    true,\n    null\n  ],\n  \"b\": 1.0\n}"
        );
    }

    // Qwen2.5's way of writing tool calls and tool answers.
    const TOOLS: &str = concat!(
        "{% for m in messages %}<|im_start|>{{ m.role }}{% if m.name %} ({{ m.name }}){% endif %}{{ '\\n' }}",
        "{% if m.content %}{{ m.content }}{% endif %}",
        "{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}",
        "<|im_end|>\n{% endfor %}"
    );

    #[test]
    fn a_tool_calling_turn_is_labelled_whole() {
        let t = ChatTemplate::new(TOOLS, vec![]).unwrap();
        let call = r#"{"tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"b": 2, "a": 1}}}]}"#;
        let m = vec![
            Message { role: "user", content: Some("1+2?"), extra: Some(r#"{"name": "ann"}"#) },
            Message { role: "assistant", content: None, extra: Some(call) },
            Message { role: "tool", content: Some("3"), extra: None },
            Message { role: "assistant", content: Some("3"), extra: None },
        ];
        let (text, spans) = t.render_with_spans(&m).unwrap();
        assert!(text.starts_with("<|im_start|>user (ann)\n1+2?<|im_end|>\n"), "{text}");
        let got: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(got, vec![r#"<tool_call>{"name": "add", "arguments": {"b": 2, "a": 1}}</tool_call>"#, "3"]);
    }

    #[test]
    fn tool_calls_or_answers_a_template_drops_are_errors() {
        let t = ChatTemplate::new(builtin("alpaca").unwrap(), vec![("eos_token".into(), "</s>".into())]).unwrap();
        let m = vec![
            Message { role: "user", content: Some("q"), extra: None },
            Message { role: "tool", content: Some("r"), extra: None },
            Message { role: "assistant", content: Some("a"), extra: None },
        ];
        assert!(t.render_with_spans(&m).unwrap_err().to_string().contains("does not render 'tool' messages"));
        let t = ChatTemplate::new(builtin("chatml").unwrap(), vec![]).unwrap();
        let call = r#"{"tool_calls": [{"type": "function", "function": {"name": "f"}}]}"#;
        let m = vec![
            Message { role: "user", content: Some("q"), extra: None },
            Message { role: "assistant", content: Some("a"), extra: Some(call) },
        ];
        assert!(t.render_with_spans(&m).unwrap_err().to_string().contains("does not render tool calls"));
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('only user/assistant') }}", vec![]).unwrap();
        let err = t.render(&msgs(&[("user", "x")])).unwrap_err().to_string();
        assert!(err.contains("only user/assistant"), "{err}");
    }
}
