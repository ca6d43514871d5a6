//! `ftc._data`: the per-record kernels of ftc's data stage. This file only converts between
//! Arrow (PyCapsule interface) and the kernels, releases the GIL, and maps errors; the work
//! lives in one module per capability.

mod augment;
mod bpe;
mod clean;
mod conll;
mod dedup;
mod encode;
mod error;
mod lines;
mod pack;
mod pretok;
mod tags;
mod template;
mod windows;
mod wordpiece;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arrow_array::builder::{LargeStringBuilder, UInt64Builder};
use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, LargeListArray, LargeStringArray, ListArray, StringArray, StringViewArray,
    StructArray, UInt32Array, UInt64Array, UInt8Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3_arrow::PyArray;
use rayon::ThreadPool;

use crate::encode::{Encoder, Example, Truncation};
use crate::error::DataError;
use crate::lines::{FieldKind, MessageKeys};
use crate::template::{ChatTemplate, Message};

// The tokenizer allocates a string per token; mimalloc keeps that fast and compact across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The last resort when `ftc.errors` cannot be imported (the extension loaded on its own).
create_exception!(_data, DataKernelError, PyException, "An error raised by a data kernel.");

/// Each kind of kernel error as its typed Python class in `ftc.errors` (a `KernelError`, so an
/// `FtcError` with a hint): callers catch what they can handle, the CLI prints one line.
impl From<DataError> for PyErr {
    fn from(e: DataError) -> PyErr {
        let class = match &e {
            DataError::Tokenizer(_) => "TokenizerError",
            DataError::Template(_) => "TemplateError",
            DataError::Input(_) => "KernelInputError",
            DataError::Io { .. } => "KernelIOError",
        };
        let msg = e.to_string();
        Python::attach(|py| {
            let typed = py
                .import("ftc.errors")
                .and_then(|m| m.getattr(class))
                .and_then(|c| c.call1((msg.clone(),)))
                .map(PyErr::from_value);
            typed.unwrap_or_else(|_| DataKernelError::new_err(msg))
        })
    }
}

fn input_err(msg: impl Into<String>) -> PyErr {
    DataError::Input(msg.into()).into()
}

/// A rayon pool per thread count, so `threads=1` and `threads=2` are both reproducible.
fn pool(threads: usize) -> PyResult<Arc<ThreadPool>> {
    pool_for(threads, "work")
}

/// A pool per thread count and role: reading (`scan_lines`, on the thread `ftc.sources.ahead`
/// reads with) has its own, so the next batch's reading never queues behind this batch's
/// encoding, which is what it overlaps.
fn pool_for(threads: usize, role: &'static str) -> PyResult<Arc<ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<(usize, &'static str), Arc<ThreadPool>>>> = OnceLock::new();
    let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let mut pools = POOLS.get_or_init(Default::default).lock().expect("pool lock");
    if let Some(p) = pools.get(&(n, role)) {
        return Ok(p.clone());
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| input_err(e.to_string()))?,
    );
    pools.insert((n, role), p.clone());
    Ok(p)
}

fn arr(a: impl Array + 'static) -> PyArray {
    PyArray::from_array_ref(Arc::new(a) as ArrayRef)
}

fn downcast<'a, T: 'static>(a: &'a PyArray, what: &str) -> PyResult<&'a T> {
    a.as_ref()
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| input_err(format!("{what}: unexpected Arrow type {}", a.as_ref().data_type())))
}

/// Borrowed `&str`s of a string column (utf8, large_utf8 or utf8_view); null reads as "".
fn strs<'a>(a: &'a PyArray, what: &str) -> PyResult<Vec<&'a str>> {
    str_values(a.as_ref().as_ref(), what)
}

fn str_values<'a>(a: &'a dyn Array, what: &str) -> PyResult<Vec<&'a str>> {
    let any = a.as_any();
    let get = |n: usize, null: &dyn Fn(usize) -> bool, val: &dyn Fn(usize) -> &'a str| {
        (0..n).map(|i| if null(i) { "" } else { val(i) }).collect()
    };
    if let Some(s) = any.downcast_ref::<LargeStringArray>() {
        Ok(get(s.len(), &|i| s.is_null(i), &|i| s.value(i)))
    } else if let Some(s) = any.downcast_ref::<StringArray>() {
        Ok(get(s.len(), &|i| s.is_null(i), &|i| s.value(i)))
    } else if let Some(s) = any.downcast_ref::<StringViewArray>() {
        Ok(get(s.len(), &|i| s.is_null(i), &|i| s.value(i)))
    } else {
        Err(input_err(format!("{what}: expected strings, found Arrow type {}", a.data_type())))
    }
}

/// The row boundaries and the values of a list or large_list column.
fn list_parts<'a>(a: &'a PyArray, what: &str) -> PyResult<(Vec<usize>, &'a ArrayRef)> {
    let any = a.as_ref().as_any();
    if let Some(l) = any.downcast_ref::<ListArray>() {
        Ok((l.value_offsets().iter().map(|&o| o as usize).collect(), l.values()))
    } else if let Some(l) = any.downcast_ref::<LargeListArray>() {
        Ok((l.value_offsets().iter().map(|&o| o as usize).collect(), l.values()))
    } else {
        Err(input_err(format!("{what}: expected a list column, found Arrow type {}", a.as_ref().data_type())))
    }
}

/// `list<large_string>` from row offsets and values.
fn list_str<S: AsRef<str>>(offsets: Vec<i32>, values: Vec<S>) -> PyArray {
    let field = Arc::new(Field::new("item", DataType::LargeUtf8, true));
    let values = Arc::new(LargeStringArray::from_iter_values(values));
    arr(ListArray::new(field, OffsetBuffer::new(ScalarBuffer::from(offsets)), values, None))
}

fn list_i32(offsets: Vec<i32>, values: Vec<i32>) -> PyArray {
    let field = Arc::new(Field::new("item", DataType::Int32, true));
    arr(ListArray::new(field, OffsetBuffer::new(ScalarBuffer::from(offsets)), Arc::new(Int32Array::from(values)), None))
}

/// Splits a chunk of a JSON Lines or text file into usable lines and quarantined ones.
/// `json_fields`: `None` for text, else `[(field, "string"|"messages"|"scalar")]`; a line with
/// messages comes back rewritten (see `lines`): `role_key` and `content_key` name the keys of a
/// message (default: `role`/`content`, else `from`/`value`), `roles` maps each role name found to
/// its canonical one (a name not in it is an unknown role).
/// Returns `(lines: large_string, line_numbers: u64, bad_line_numbers: u64, bad_reasons: large_string, n_lines)`.
#[pyfunction]
#[pyo3(signature = (buf, first_line, json_fields=None, threads=0, role_key=None, content_key=None, roles=HashMap::new()))]
#[allow(clippy::too_many_arguments)]
fn scan_lines(
    py: Python<'_>,
    buf: &[u8],
    first_line: u64,
    json_fields: Option<Vec<(String, String)>>,
    threads: usize,
    role_key: Option<String>,
    content_key: Option<String>,
    roles: HashMap<String, String>,
) -> PyResult<(PyArray, PyArray, PyArray, PyArray, u64)> {
    let fields = json_fields
        .map(|f| {
            f.into_iter()
                .map(|(n, k)| FieldKind::parse(&k).map(|k| (n, k)).ok_or_else(|| input_err(format!("unknown field kind {k}"))))
                .collect::<PyResult<Vec<_>>>()
        })
        .transpose()?;
    let keys = MessageKeys { role: role_key, content: content_key, roles };
    let pool = pool_for(threads, "read")?;
    let scan = py.detach(|| pool.install(|| lines::scan_lines(buf, first_line, fields.as_deref(), &keys)));
    Ok((
        arr(LargeStringArray::from_iter_values(scan.good)),
        arr(UInt64Array::from(scan.good_lines)),
        arr(UInt64Array::from(scan.bad_lines)),
        arr(LargeStringArray::from_iter_values(scan.bad_reasons)),
        scan.n_lines,
    ))
}

/// Tokenizer + chat template, loaded once and applied to Arrow batches.
#[pyclass(frozen, module = "ftc._data")]
struct DataEncoder {
    encoder: Encoder,
    template: Option<ChatTemplate>,
    pool: Arc<ThreadPool>,
}

fn parse_truncation(s: &str) -> PyResult<Truncation> {
    match s {
        "right" => Ok(Truncation::Right),
        "left" => Ok(Truncation::Left),
        "drop" => Ok(Truncation::Drop),
        "chunk" => Ok(Truncation::Keep),
        _ => Err(input_err(format!("unknown truncation {s:?}"))),
    }
}

/// Borrowed view of a `large_list<struct<role: large_string, content: large_string[, extra:
/// large_string]>>` column; `extra` (a message's other keys, as JSON) is optional.
fn conversations(messages: &PyArray) -> PyResult<Vec<Vec<Message<'_>>>> {
    let list = downcast::<LargeListArray>(messages, "messages")?;
    let structs = list
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| input_err("messages: expected a list of structs"))?;
    let col = |name: &str| -> PyResult<&LargeStringArray> {
        structs
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<LargeStringArray>())
            .ok_or_else(|| input_err(format!("messages: expected a large_string field {name:?}")))
    };
    let (roles, contents) = (col("role")?, col("content")?);
    let extras = if structs.column_by_name("extra").is_some() { Some(col("extra")?) } else { None };
    let offsets = list.value_offsets();
    Ok((0..list.len())
        .map(|i| {
            (offsets[i] as usize..offsets[i + 1] as usize)
                .map(|j| Message {
                    role: roles.value(j),
                    content: (!contents.is_null(j)).then(|| contents.value(j)),
                    extra: extras.filter(|e| !e.is_null(j)).map(|e| e.value(j)),
                })
                .collect()
        })
        .collect())
}

type Encoded = (PyArray, PyArray, PyArray, PyArray, PyArray, PyArray);

/// `(input_ids, labels or token_type_ids, status: u8, error, content_hash: u64, length: u32)`.
/// The token columns are filled on the pool, each example into its slice: a serial copy here,
/// holding the GIL, was the largest part of encoding that did not scale with threads.
fn examples_to_arrow(py: Python<'_>, pool: &ThreadPool, mut examples: Vec<Example>, type_ids: bool) -> Encoded {
    use rayon::prelude::*;
    let running = |lens: &mut dyn Iterator<Item = usize>| {
        std::iter::once(0).chain(lens.scan(0usize, |at, n| {
            *at += n;
            Some(*at as i32)
        }))
        .collect::<Vec<i32>>()
    };
    let offsets = running(&mut examples.iter().map(|e| e.ids.len()));
    let second_offsets =
        running(&mut examples.iter().map(|e| if type_ids { e.type_ids.len() } else { e.labels.len() }));
    let mut status = Vec::with_capacity(examples.len());
    let mut errors = LargeStringBuilder::new();
    let mut hashes = UInt64Builder::with_capacity(examples.len());
    let mut lengths = Vec::with_capacity(examples.len());
    for e in &mut examples {
        lengths.push(e.length);
        status.push(e.status as u8);
        errors.append_option(e.error.take());
        hashes.append_value(e.content_hash);
    }
    let (ids, second) = py.detach(|| {
        pool.install(|| {
            let mut ids = vec![0i32; *offsets.last().unwrap() as usize];
            let mut second = vec![0i32; *second_offsets.last().unwrap() as usize];
            examples
                .into_par_iter()
                .zip(pack::split_at_offsets(&mut ids, &offsets))
                .zip(pack::split_at_offsets(&mut second, &second_offsets))
                .for_each(|((e, ids), second)| {
                    ids.iter_mut().zip(&e.ids).for_each(|(o, &i)| *o = i as i32);
                    if type_ids {
                        second.iter_mut().zip(&e.type_ids).for_each(|(o, &t)| *o = t as i32);
                    } else {
                        second.copy_from_slice(&e.labels);
                    }
                });
            (ids, second)
        })
    });
    (
        list_i32(offsets, ids),
        list_i32(second_offsets, second),
        arr(UInt8Array::from(status)),
        arr(errors.finish()),
        arr(hashes.finish()),
        arr(UInt32Array::from(lengths)),
    )
}

type Windows = (PyArray, PyArray, PyArray, PyArray, PyArray, PyArray, Option<PyArray>, Option<PyArray>, PyArray);

fn windows_to_arrow(out: Vec<Result<Vec<windows::Window>, DataError>>, train: bool) -> Windows {
    let mut offsets = vec![0i32];
    let (mut ids, mut types, mut starts, mut ends, mut words) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut example, mut first, mut last) = (vec![], vec![], vec![]);
    let mut errors = LargeStringBuilder::new();
    for (i, r) in out.into_iter().enumerate() {
        match r {
            Ok(ws) => {
                errors.append_null();
                for w in ws {
                    ids.extend(w.ids.iter().map(|&t| t as i32));
                    types.extend(w.type_ids.iter().map(|&t| t as i32));
                    starts.extend(w.starts);
                    ends.extend(w.ends);
                    words.extend(w.words);
                    offsets.push(ids.len() as i32);
                    example.push(i as u32);
                    first.push(w.answer.0);
                    last.push(w.answer.1);
                }
            }
            Err(e) => errors.append_value(e.to_string()),
        }
    }
    (
        list_i32(offsets.clone(), ids),
        list_i32(offsets.clone(), types),
        list_i32(offsets.clone(), starts),
        list_i32(offsets.clone(), ends),
        list_i32(offsets, words),
        arr(UInt32Array::from(example)),
        train.then(|| arr(Int32Array::from(first))),
        train.then(|| arr(Int32Array::from(last))),
        arr(errors.finish()),
    )
}

#[pymethods]
impl DataEncoder {
    /// `special_tokens`: `{bos_token: "<s>", ...}` as the template sees them.
    /// `fast=False` keeps the `tokenizers` crate where the exact fast BPE path would apply.
    #[new]
    #[pyo3(signature = (tokenizer_json, template=None, special_tokens=HashMap::new(), eos_token=None, threads=0, fast=true))]
    fn new(
        tokenizer_json: &str,
        template: Option<&str>,
        special_tokens: HashMap<String, String>,
        eos_token: Option<&str>,
        threads: usize,
        fast: bool,
    ) -> PyResult<Self> {
        let mut special: Vec<(String, String)> = special_tokens.into_iter().collect();
        special.sort();
        Ok(Self {
            encoder: Encoder::new(tokenizer_json, eos_token, fast)?,
            template: template.map(|t| ChatTemplate::new(t, special)).transpose()?,
            pool: pool(threads)?,
        })
    }

    /// Which encoder runs chat and text: `ftc-bpe: …` (what it covers) or `tokenizers: …` (why
    /// the exact fast path does not apply). Pairs always go through `tokenizers`.
    #[getter]
    fn encoder(&self) -> &str {
        self.encoder.note()
    }

    /// Renders each conversation (for inspection and tests); large_string out.
    fn render(&self, py: Python<'_>, messages: PyArray) -> PyResult<PyArray> {
        let template = self.template.as_ref().ok_or_else(|| input_err("no chat template configured"))?;
        let convs = conversations(&messages)?;
        let out: Vec<std::result::Result<String, DataError>> = py.detach(|| {
            use rayon::prelude::*;
            self.pool.install(|| convs.par_iter().map(|c| template.render(c)).collect())
        });
        Ok(arr(LargeStringArray::from_iter_values(out.into_iter().collect::<Result<Vec<_>, _>>()?)))
    }

    /// Conversations → `(input_ids, labels, status: u8, error: large_string, content_hash: u64,
    /// length: u32)`, length counted before truncation.
    /// Status: 0 ok, 1 too long (truncation "drop"), 2 no labelled token, 3 failed (see error).
    #[pyo3(signature = (messages, max_length, truncation="right", train_on_all=false))]
    fn encode_chat(
        &self,
        py: Python<'_>,
        messages: PyArray,
        max_length: usize,
        truncation: &str,
        train_on_all: bool,
    ) -> PyResult<Encoded> {
        let template = self.template.as_ref().ok_or_else(|| input_err("no chat template configured"))?;
        let truncation = parse_truncation(truncation)?;
        let convs = conversations(&messages)?;
        let examples =
            py.detach(|| self.pool.install(|| self.encoder.encode_chat(template, &convs, max_length, truncation, train_on_all)));
        Ok(examples_to_arrow(py, &self.pool, examples, false))
    }

    /// Conversation pairs sharing their start (preference pairs) → the six columns of the firsts,
    /// then those of the seconds, as `encode_chat` would give each; the shared start is
    /// tokenized once.
    #[pyo3(signature = (first, second, max_length, truncation="right", train_on_all=false))]
    fn encode_chat_pairs(
        &self,
        py: Python<'_>,
        first: PyArray,
        second: PyArray,
        max_length: usize,
        truncation: &str,
        train_on_all: bool,
    ) -> PyResult<(Encoded, Encoded)> {
        let template = self.template.as_ref().ok_or_else(|| input_err("no chat template configured"))?;
        let truncation = parse_truncation(truncation)?;
        let (a, b) = (conversations(&first)?, conversations(&second)?);
        if a.len() != b.len() {
            return Err(input_err("first and second differ in length"));
        }
        let pairs = py.detach(|| {
            self.pool.install(|| self.encoder.encode_chat_pairs(template, &a, &b, max_length, truncation, train_on_all))
        });
        let (x, y): (Vec<Example>, Vec<Example>) = pairs.into_iter().unzip();
        Ok((examples_to_arrow(py, &self.pool, x, false), examples_to_arrow(py, &self.pool, y, false)))
    }

    /// Raw texts → the same six columns; every token labelled, EOS appended.
    #[pyo3(signature = (texts, max_length, truncation="right"))]
    fn encode_text(&self, py: Python<'_>, texts: PyArray, max_length: usize, truncation: &str) -> PyResult<Encoded> {
        let truncation = parse_truncation(truncation)?;
        let views = strs(&texts, "texts")?;
        let examples = py.detach(|| self.pool.install(|| self.encoder.encode_text(&views, max_length, truncation)));
        Ok(examples_to_arrow(py, &self.pool, examples, false))
    }

    /// Classification inputs: text (+ text pair) → `(input_ids, token_type_ids, status, error,
    /// content_hash, length)`; token_type_ids are empty lists without pairs.
    #[pyo3(signature = (texts, pairs=None, max_length=512, truncation="right"))]
    fn encode_pairs(
        &self,
        py: Python<'_>,
        texts: PyArray,
        pairs: Option<PyArray>,
        max_length: usize,
        truncation: &str,
    ) -> PyResult<Encoded> {
        let truncation = parse_truncation(truncation)?;
        let views = strs(&texts, "texts")?;
        let pair_views = pairs.as_ref().map(|p| strs(p, "pairs")).transpose()?;
        if pair_views.as_ref().is_some_and(|p| p.len() != views.len()) {
            return Err(input_err("texts and pairs differ in length"));
        }
        let examples = py.detach(|| {
            self.pool.install(|| self.encoder.encode_pairs(&views, pair_views.as_deref(), max_length, truncation))
        });
        Ok(examples_to_arrow(py, &self.pool, examples, true))
    }

    /// Token classification: pre-split words (`list<string>`) and one tag id per word
    /// (`list<int32>`) → `(input_ids, labels, length: u32 before truncation)`, as transformers'
    /// `is_split_into_words=True` + `word_ids()` recipe builds them (see tags.rs).
    /// `label_names` (the label of each id) is needed for `label_all_subwords` (B-X → I-X).
    #[pyo3(signature = (words, tags, max_length, label_all_subwords=false, label_names=None))]
    fn encode_words(
        &self,
        py: Python<'_>,
        words: PyArray,
        tags: PyArray,
        max_length: usize,
        label_all_subwords: bool,
        label_names: Option<Vec<String>>,
    ) -> PyResult<(PyArray, PyArray, PyArray)> {
        let continuation = match (label_all_subwords, label_names) {
            (false, _) => None,
            (true, Some(names)) => Some(tags::continuation_labels(&names)),
            (true, None) => return Err(input_err("label_all_subwords needs label_names (to turn B-X into I-X)")),
        };
        let (word_offsets, word_values) = list_parts(&words, "words")?;
        let (tag_offsets, tag_values) = list_parts(&tags, "tags")?;
        if word_offsets.len() != tag_offsets.len() {
            return Err(input_err(format!("{} rows of words but {} rows of tags", word_offsets.len() - 1, tag_offsets.len() - 1)));
        }
        let word_values = str_values(word_values.as_ref(), "words")?;
        let tag_values = tag_values
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| input_err(format!("tags: expected list<int32>, found list<{}>", tag_values.data_type())))?
            .values();
        let rows = word_offsets.len() - 1;
        let words: Vec<Vec<&str>> = (0..rows).map(|i| word_values[word_offsets[i]..word_offsets[i + 1]].to_vec()).collect();
        let tags: Vec<&[i32]> = (0..rows).map(|i| &tag_values[tag_offsets[i]..tag_offsets[i + 1]]).collect();
        let encoder = &self.encoder;
        let out = py.detach(|| {
            self.pool.install(|| tags::encode_all(encoder, &words, &tags, max_length, continuation.as_deref()))
        })?;
        let (mut offsets, mut ids, mut labels, mut lengths) = (vec![0i32], vec![], vec![], vec![]);
        for t in out {
            ids.extend(t.ids.iter().map(|&i| i as i32));
            labels.extend(t.labels);
            offsets.push(ids.len() as i32);
            lengths.push(t.length);
        }
        Ok((list_i32(offsets.clone(), ids), list_i32(offsets, labels), arr(UInt32Array::from(lengths))))
    }

    /// Extractive QA windows (see windows.rs): questions + contexts → one row per window:
    /// `(input_ids, token_type_ids, offset_starts, offset_ends, word_ids, example: u32,
    /// start_positions: i32 | None, end_positions: i32 | None, errors)`. The four list columns
    /// are `list<int32>`; offsets (characters into the context) and word ids are -1 outside the
    /// context. `answer_starts`/`answer_ends` (int64 character offsets, null or -1 for no
    /// answer) give the training targets; without them both position columns are None.
    /// `errors` has one row per example: null, or why the example has no window.
    #[pyo3(signature = (questions, contexts, answer_starts=None, answer_ends=None, max_length=384, doc_stride=128))]
    #[allow(clippy::too_many_arguments)]
    fn encode_windows(
        &self,
        py: Python<'_>,
        questions: PyArray,
        contexts: PyArray,
        answer_starts: Option<PyArray>,
        answer_ends: Option<PyArray>,
        max_length: usize,
        doc_stride: usize,
    ) -> PyResult<Windows> {
        let questions = strs(&questions, "questions")?;
        let contexts = strs(&contexts, "contexts")?;
        if questions.len() != contexts.len() {
            return Err(input_err("questions and contexts differ in length"));
        }
        if doc_stride >= max_length {
            return Err(input_err(format!("doc_stride {doc_stride} must be less than max_length {max_length}")));
        }
        let spans = match (&answer_starts, &answer_ends) {
            (Some(s), Some(e)) => {
                let (s, e) = (downcast::<Int64Array>(s, "answer_starts")?, downcast::<Int64Array>(e, "answer_ends")?);
                if s.len() != questions.len() || e.len() != questions.len() {
                    return Err(input_err("answer_starts and answer_ends need one value per question"));
                }
                let span = |i: usize| {
                    (s.is_valid(i) && e.is_valid(i) && s.value(i) >= 0 && e.value(i) >= s.value(i))
                        .then(|| (s.value(i) as usize, e.value(i) as usize))
                };
                (0..s.len()).map(span).collect()
            }
            (None, None) => vec![None; questions.len()],
            _ => return Err(input_err("answer_starts and answer_ends go together")),
        };
        let examples: Vec<windows::Example> = (0..questions.len())
            .map(|i| windows::Example { question: questions[i], context: contexts[i], answer: spans[i] })
            .collect();
        let encoder = &self.encoder;
        let out = py.detach(|| self.pool.install(|| windows::encode_windows(encoder, &examples, max_length, doc_stride)));
        Ok(windows_to_arrow(out, answer_starts.is_some()))
    }

    /// Token ids → text, for `ftc inspect`.
    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.encoder
            .tokenizer()
            .decode(&ids, skip_special_tokens)
            .map_err(|e| DataError::Tokenizer(e.to_string()).into())
    }
}

/// The rules of `[data.clean]` that rewrite or drop a text (see clean.rs).
#[pyclass(frozen, module = "ftc._data")]
struct TextCleaner {
    cleaner: clean::Cleaner,
    pool: Arc<ThreadPool>,
}

#[pymethods]
impl TextCleaner {
    #[new]
    #[pyo3(signature = (strip_html=false, normalize=None, remove_control=false, replace=vec![],
                        collapse_whitespace=false, drop_if_matches=vec![], threads=0))]
    fn new(
        strip_html: bool,
        normalize: Option<&str>,
        remove_control: bool,
        replace: Vec<(String, String)>,
        collapse_whitespace: bool,
        drop_if_matches: Vec<String>,
        threads: usize,
    ) -> PyResult<Self> {
        let normalize = match normalize {
            None | Some("none") => None,
            Some("NFC") => Some(clean::Form::Nfc),
            Some("NFKC") => Some(clean::Form::Nfkc),
            Some(other) => return Err(input_err(format!("unknown normalization {other:?}"))),
        };
        let rules = clean::Rules { strip_html, normalize, remove_control, replace, collapse_whitespace, drop_if_matches };
        Ok(Self { cleaner: clean::Cleaner::new(rules)?, pool: pool(threads)? })
    }

    /// Texts → `(cleaned: large_string, changed: u8 bitmask, dropped_by: i32 (-1 = kept))`.
    /// Bits: 1 html, 2 normalize, 4 control characters, 8 replace, 16 whitespace.
    fn clean(&self, py: Python<'_>, texts: PyArray) -> PyResult<(PyArray, PyArray, PyArray)> {
        let views = strs(&texts, "texts")?;
        let out = py.detach(|| self.pool.install(|| self.cleaner.clean_all(&views)));
        let changed = UInt8Array::from_iter_values(out.iter().map(|c| c.changed));
        let dropped = Int32Array::from_iter_values(out.iter().map(|c| c.dropped_by.map_or(-1, |i| i as i32)));
        let texts = LargeStringArray::from_iter_values(out.into_iter().map(|c| c.text));
        Ok((arr(texts), arr(changed), arr(dropped)))
    }
}

/// The error message of an invalid regex (Rust `regex` syntax), or None.
#[pyfunction]
fn check_regex(pattern: &str) -> Option<String> {
    clean::compile(pattern).err().map(|e| e.to_string())
}

/// Exact or near-duplicate detection over a stream of batches (see dedup.rs).
#[pyclass(module = "ftc._data")]
struct Deduper {
    dedup: dedup::Dedup,
    pool: Arc<ThreadPool>,
}

#[pymethods]
impl Deduper {
    #[new]
    #[pyo3(signature = (mode, threshold=0.8, shingle=5, num_perm=128, threads=0))]
    fn new(mode: &str, threshold: f64, shingle: usize, num_perm: usize, threads: usize) -> PyResult<Self> {
        let dedup = match mode {
            "exact" => dedup::Dedup::exact(),
            "near" if shingle > 0 && num_perm > 0 && (0.0..=1.0).contains(&threshold) => {
                dedup::Dedup::near(dedup::Near { threshold, shingle, num_perm })
            }
            _ => return Err(input_err(format!("bad dedup settings: {mode} {threshold} {shingle} {num_perm}"))),
        };
        Ok(Self { dedup, pool: pool(threads)? })
    }

    /// For each text, -1 when kept, else the sequence number (counting every text passed in
    /// so far, from 0) of the earlier kept text it duplicates.
    fn check(&mut self, py: Python<'_>, texts: PyArray) -> PyResult<PyArray> {
        let views = strs(&texts, "texts")?;
        let (dedup, pool) = (&mut self.dedup, &self.pool);
        let out = py.detach(|| pool.install(|| dedup.check(&views)));
        Ok(arr(Int64Array::from_iter_values(out.into_iter().map(|o| o.map_or(-1, |s| s as i64)))))
    }
}

/// EDA-style augmentation (see augment.rs).
#[pyclass(frozen, module = "ftc._data")]
struct Augmenter {
    augmenter: augment::Augmenter,
    pool: Arc<ThreadPool>,
}

#[pymethods]
impl Augmenter {
    #[new]
    #[pyo3(signature = (synonym=0.0, insert=0.0, swap=0.0, delete=0.0, synonyms=vec![], seed=0, threads=0))]
    fn new(
        synonym: f64,
        insert: f64,
        swap: f64,
        delete: f64,
        synonyms: Vec<(String, Vec<String>)>,
        seed: u64,
        threads: usize,
    ) -> PyResult<Self> {
        let rates = augment::Rates { synonym, insert, swap, delete };
        Ok(Self { augmenter: augment::Augmenter::new(rates, synonyms, seed), pool: pool(threads)? })
    }

    /// Copy number `copy` of each text; `keys` (u64, one per text) seed each text's randomness.
    fn augment(&self, py: Python<'_>, texts: PyArray, keys: PyArray, copy: u32) -> PyResult<PyArray> {
        let views = strs(&texts, "texts")?;
        let keys = downcast::<UInt64Array>(&keys, "keys")?.values();
        if keys.len() != views.len() {
            return Err(input_err("texts and keys differ in length"));
        }
        let out = py.detach(|| self.pool.install(|| self.augmenter.augment_all(&views, keys, copy)));
        Ok(arr(LargeStringArray::from_iter_values(out)))
    }
}

/// Packs `lengths` (u32) into rows of `capacity` tokens (best-fit decreasing, see pack.rs).
/// Returns `(row_offsets: u64, items: u32)`: row `r` holds `items[row_offsets[r]:row_offsets[r+1]]`.
#[pyfunction]
fn pack_rows(py: Python<'_>, lengths: PyArray, capacity: u32) -> PyResult<(PyArray, PyArray)> {
    let lengths = downcast::<UInt32Array>(&lengths, "lengths")?.values().to_vec();
    if let Some(too_long) = lengths.iter().position(|&l| l > capacity) {
        return Err(input_err(format!("example {too_long} has {} tokens, more than {capacity}", lengths[too_long])));
    }
    let (offsets, items) = py.detach(|| pack::pack(&lengths, capacity));
    Ok((arr(UInt64Array::from(offsets)), arr(UInt32Array::from(items))))
}

/// Materializes packed rows `start..end` from the spool files.
/// Returns `(input_ids, labels, position_ids, seq_lengths)`, each `list<int32>`, and the number
/// of labelled tokens.
#[pyfunction]
#[pyo3(signature = (ids_path, labels_path, offsets, lengths, row_offsets, items, start, end, threads=0))]
#[allow(clippy::too_many_arguments)]
fn gather_rows(
    py: Python<'_>,
    ids_path: &str,
    labels_path: &str,
    offsets: PyArray,
    lengths: PyArray,
    row_offsets: PyArray,
    items: PyArray,
    start: usize,
    end: usize,
    threads: usize,
) -> PyResult<(PyArray, PyArray, PyArray, PyArray, u64)> {
    let offsets = downcast::<UInt64Array>(&offsets, "offsets")?.values();
    let lengths = downcast::<UInt32Array>(&lengths, "lengths")?.values();
    let row_offsets = downcast::<UInt64Array>(&row_offsets, "row_offsets")?.values();
    let items = downcast::<UInt32Array>(&items, "items")?.values();
    if end > row_offsets.len().saturating_sub(1) || start > end {
        return Err(input_err(format!("rows {start}..{end} out of range")));
    }
    let pool = pool(threads)?;
    let p = py.detach(|| {
        pool.install(|| pack::gather(ids_path, labels_path, offsets, lengths, row_offsets, items, start..end))
    })?;
    let labelled = p.labelled;
    Ok((
        list_i32(p.token_offsets.clone(), p.input_ids),
        list_i32(p.token_offsets.clone(), p.labels),
        list_i32(p.token_offsets, p.position_ids),
        list_i32(p.seq_offsets, p.seq_lengths),
        labelled,
    ))
}

/// The data stage's content hash of each text (what splits and mixing weights key on), for
/// tasks whose encoder gives none.
#[pyfunction]
fn hash_texts(py: Python<'_>, texts: PyArray) -> PyResult<PyArray> {
    let texts = strs(&texts, "texts")?;
    let hashes: Vec<u64> = py.detach(|| texts.iter().map(|t| crate::encode::content_hash([*t])).collect());
    Ok(arr(UInt64Array::from(hashes)))
}

/// blake3 hex digest of each file (memory-mapped, hashed on every core).
#[pyfunction]
#[pyo3(signature = (paths, threads=0))]
fn hash_files(py: Python<'_>, paths: Vec<String>, threads: usize) -> PyResult<Vec<String>> {
    let pool = pool(threads)?;
    py.detach(|| {
        pool.install(|| {
            paths
                .iter()
                .map(|p| {
                    let mut h = blake3::Hasher::new();
                    h.update_mmap_rayon(p).map_err(|e| DataError::Io { path: p.clone(), source: e })?;
                    Ok(h.finalize().to_hex().to_string())
                })
                .collect::<Result<Vec<_>, DataError>>()
        })
    })
    .map_err(Into::into)
}

/// Texts + character-offset entity spans (`list<struct<start: int64, end: int64, label:
/// string>>`, one list per text) → `(words, tags, starts, ends, problems)`: BIO tags on words
/// split at whitespace and punctuation, each word's character offsets (`list<int32>`), and per
/// text the spans left out, one line each (`list<large_string>`), see tags.rs.
#[pyfunction]
#[pyo3(signature = (texts, spans, threads=0))]
fn spans_to_words(py: Python<'_>, texts: PyArray, spans: PyArray, threads: usize) -> PyResult<(PyArray, PyArray, PyArray, PyArray, PyArray)> {
    let texts = strs(&texts, "texts")?;
    let (offsets, values) = list_parts(&spans, "spans")?;
    if offsets.len() != texts.len() + 1 {
        return Err(input_err(format!("{} texts but {} rows of spans", texts.len(), offsets.len() - 1)));
    }
    let structs = values.as_any().downcast_ref::<StructArray>().ok_or_else(|| input_err("spans: expected a list of structs"))?;
    let int = |name: &str| -> PyResult<&[i64]> {
        structs
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .map(|c| c.values().as_ref())
            .ok_or_else(|| input_err(format!("spans: expected an int64 field {name:?}")))
    };
    let (starts, ends) = (int("start")?, int("end")?);
    let labels = str_values(
        structs.column_by_name("label").ok_or_else(|| input_err("spans: expected a string field \"label\""))?.as_ref(),
        "spans.label",
    )?;
    let rows: Vec<Vec<tags::Span>> = (0..texts.len())
        .map(|i| (offsets[i]..offsets[i + 1]).map(|j| tags::Span { start: starts[j], end: ends[j], label: labels[j] }).collect())
        .collect();
    let pool = pool(threads)?;
    let out: Vec<tags::Words> = py.detach(|| {
        use rayon::prelude::*;
        pool.install(|| (0..texts.len()).into_par_iter().map(|i| tags::spans_to_words(texts[i], &rows[i])).collect())
    });
    let (mut w_off, mut p_off) = (vec![0i32], vec![0i32]);
    let (mut words, mut tag_values, mut s, mut e, mut problems) = (vec![], vec![], vec![], vec![], vec![]);
    for row in out {
        words.extend(row.words);
        tag_values.extend(row.tags);
        s.extend(row.starts);
        e.extend(row.ends);
        problems.extend(row.problems);
        w_off.push(words.len() as i32);
        p_off.push(problems.len() as i32);
    }
    Ok((
        list_str(w_off.clone(), words),
        list_str(w_off.clone(), tag_values),
        list_i32(w_off.clone(), s),
        list_i32(w_off, e),
        list_str(p_off, problems),
    ))
}

/// CoNLL-style text (newlines as `\n`) → `(lines, tokens, tags, bad_first, bad_lines, bad_raw)`:
/// each good sentence's first line (`uint64`), tokens and tags (`list<large_string>`), and
/// each bad sentence's first line, the line that spoils it and that line's text; see conll.rs.
#[pyfunction]
fn conll_sentences(text: &str) -> (PyArray, PyArray, PyArray, PyArray, PyArray, PyArray) {
    let s = conll::sentences(text);
    let (first, (lines, raw)): (Vec<u64>, (Vec<u64>, Vec<&str>)) = s.bad.iter().map(|&(f, n, r)| (f, (n, r))).unzip();
    (
        arr(UInt64Array::from(s.lines)),
        list_str(s.offsets.clone(), s.tokens),
        list_str(s.offsets, s.tags),
        arr(UInt64Array::from(first)),
        arr(UInt64Array::from(lines)),
        arr(LargeStringArray::from_iter_values(raw)),
    )
}

/// Built-in chat template source by name (`chatml`, `alpaca`), or None.
#[pyfunction]
fn builtin_template(name: &str) -> Option<&'static str> {
    template::builtin(name)
}

/// A chat template compiled once, for the runtime: each conversation rendered as an inference
/// prompt (`add_generation_prompt=True`) by the same renderer as training, so served prompts
/// match the trained format, and a server compiles its template at start, not per request.
#[pyclass(frozen)]
struct PromptTemplate {
    template: ChatTemplate,
}

#[pymethods]
impl PromptTemplate {
    #[new]
    #[pyo3(signature = (template, special_tokens=HashMap::new()))]
    fn new(template: &str, special_tokens: HashMap<String, String>) -> PyResult<Self> {
        let mut special: Vec<(String, String)> = special_tokens.into_iter().collect();
        special.sort();
        Ok(Self { template: ChatTemplate::new(template, special)? })
    }

    fn render(&self, py: Python<'_>, messages: Vec<(String, Option<String>)>) -> PyResult<String> {
        let msgs: Vec<Message> =
            messages.iter().map(|(r, c)| Message { role: r, content: c.as_deref(), extra: None }).collect();
        Ok(py.detach(|| self.template.render_prompt(&msgs))?)
    }
}

#[pymodule]
fn _data(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DataKernelError", m.py().get_type::<DataKernelError>())?;
    m.add_class::<DataEncoder>()?;
    m.add_class::<TextCleaner>()?;
    m.add_class::<Deduper>()?;
    m.add_class::<Augmenter>()?;
    m.add_function(wrap_pyfunction!(check_regex, m)?)?;
    m.add_function(wrap_pyfunction!(scan_lines, m)?)?;
    m.add_function(wrap_pyfunction!(pack_rows, m)?)?;
    m.add_function(wrap_pyfunction!(gather_rows, m)?)?;
    m.add_function(wrap_pyfunction!(hash_files, m)?)?;
    m.add_function(wrap_pyfunction!(hash_texts, m)?)?;
    m.add_function(wrap_pyfunction!(builtin_template, m)?)?;
    m.add_class::<PromptTemplate>()?;
    m.add_function(wrap_pyfunction!(spans_to_words, m)?)?;
    m.add_function(wrap_pyfunction!(conll_sentences, m)?)?;
    Ok(())
}
