"""Type stubs of the Rust extension (rust/src/lib.rs). Arrays cross as Arrow (PyCapsule)."""

from typing import Any

ArrowArray = Any  # any object with __arrow_c_array__

Encoded = tuple[ArrowArray, ArrowArray, ArrowArray, ArrowArray, ArrowArray, ArrowArray]

class DataKernelError(Exception): ...

class TextCleaner:
    def __init__(self, strip_html: bool = False, normalize: str | None = None, remove_control: bool = False,
                 replace: list[tuple[str, str]] = ..., collapse_whitespace: bool = False,
                 drop_if_matches: list[str] = ..., threads: int = 0) -> None: ...
    def clean(self, texts: ArrowArray) -> tuple[ArrowArray, ArrowArray, ArrowArray]:
        """(cleaned, changed bits: 1 html 2 normalize 4 control 8 replace 16 whitespace, dropped_by or -1)"""

class Deduper:
    def __init__(self, mode: str, threshold: float = 0.8, shingle: int = 5, num_perm: int = 128,
                 threads: int = 0) -> None: ...
    def check(self, texts: ArrowArray) -> ArrowArray:
        """int64 per text: -1 kept, else the sequence number of the kept text it duplicates"""

class Augmenter:
    def __init__(self, synonym: float = 0.0, insert: float = 0.0, swap: float = 0.0, delete: float = 0.0,
                 synonyms: list[tuple[str, list[str]]] = ..., seed: int = 0, threads: int = 0) -> None: ...
    def augment(self, texts: ArrowArray, keys: ArrowArray, copy: int) -> ArrowArray: ...

def check_regex(pattern: str) -> str | None: ...

class DataEncoder:
    def __init__(self, tokenizer_json: str, template: str | None = None, special_tokens: dict[str, str] = ...,
                 eos_token: str | None = None, threads: int = 0, fast: bool = True) -> None: ...
    # `ftc-bpe: …` (the exact fast BPE path and what it covers) or `tokenizers: …` (why not), then
    # `; ftc-wordpiece …` where the exact fast WordPiece tokenizes QA windows and tagged words.
    @property
    def encoder(self) -> str: ...
    def render(self, messages: ArrowArray) -> ArrowArray: ...
    # Each encode_* returns (input_ids, labels | token_type_ids, status: u8, error, content_hash: u64,
    # length: u32 before truncation); status 0 ok, 1 too long (drop), 2 no labelled token, 3 failed.
    def encode_chat(self, messages: ArrowArray, max_length: int, truncation: str = "right",
                    train_on_all: bool = False) -> Encoded: ...
    def encode_chat_pairs(self, first: ArrowArray, second: ArrowArray, max_length: int, truncation: str = "right",
                          train_on_all: bool = False) -> tuple[Encoded, Encoded]:
        """Conversation pairs that share their start: each as `encode_chat` gives it, the shared
        start tokenized once."""
    def encode_text(self, texts: ArrowArray, max_length: int, truncation: str = "right") -> Encoded: ...
    def encode_pairs(self, texts: ArrowArray, pairs: ArrowArray | None = None, max_length: int = 512,
                     truncation: str = "right") -> Encoded: ...
    def encode_words(self, words: ArrowArray, tags: ArrowArray, max_length: int, label_all_subwords: bool = False,
                     label_names: list[str] | None = None) -> tuple[ArrowArray, ArrowArray, ArrowArray]:
        """Token classification: words list<string> + tag ids list<int32> → (input_ids, labels,
        length: u32 before truncation), as `is_split_into_words=True` + `word_ids()` align them."""
    def encode_windows(self, questions: ArrowArray, contexts: ArrowArray, answer_starts: ArrowArray | None = None,
                       answer_ends: ArrowArray | None = None, max_length: int = 384, doc_stride: int = 128
                       ) -> tuple[ArrowArray, ArrowArray, ArrowArray, ArrowArray, ArrowArray, ArrowArray,
                                  ArrowArray | None, ArrowArray | None, ArrowArray]:
        """Extractive QA windows, one row each: (input_ids, token_type_ids, offset_starts, offset_ends,
        word_ids, example: u32, start_positions | None, end_positions | None), then one error (or null)
        per example. Offsets and word ids are -1 outside the context; answers are int64 character
        spans (null or -1: no answer), positions 0 (CLS) when the window does not hold the answer."""
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...

def scan_lines(buf: bytes, first_line: int, json_fields: list[tuple[str, str]] | None = None,
               threads: int = 0) -> tuple[ArrowArray, ArrowArray, ArrowArray, ArrowArray, int]: ...
def pack_rows(lengths: ArrowArray, capacity: int) -> tuple[ArrowArray, ArrowArray]: ...
def gather_rows(ids_path: str, labels_path: str, offsets: ArrowArray, lengths: ArrowArray, row_offsets: ArrowArray,
                items: ArrowArray, start: int, end: int, threads: int = 0) -> tuple[ArrowArray, ArrowArray, ArrowArray, ArrowArray, int]: ...
def hash_files(paths: list[str], threads: int = 0) -> list[str]: ...
def builtin_template(name: str) -> str | None: ...
def spans_to_words(texts: ArrowArray, spans: ArrowArray, threads: int = 0
                   ) -> tuple[ArrowArray, ArrowArray, ArrowArray, ArrowArray, ArrowArray]:
    """Texts + list<struct<start: int64, end: int64, label: string>> character spans → (words, BIO tags,
    word starts, word ends, problems: the spans left out, one line each)."""
def conll_sentences(text: str) -> tuple[ArrowArray, ArrowArray, ArrowArray, ArrowArray, ArrowArray, ArrowArray]:
    """CoNLL-style text (newlines as \\n) → (first line of each good sentence, its tokens, its tags,
    first line of each bad sentence, the line that spoils it, that line's text)."""
class PromptTemplate:
    """A chat template compiled once (the runtime's: a server compiles it at start)."""
    def __init__(self, template: str, special_tokens: dict[str, str] = ...) -> None: ...
    def render(self, messages: list[tuple[str, str | None]]) -> str:
        """One conversation rendered with `add_generation_prompt=True` (the inference prompt)."""
