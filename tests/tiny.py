"""Tiny model directories built locally (never a hub download): tokenizers trained with the
`tokenizers` library on test text, saved with `save_pretrained` so that transformers'
`AutoTokenizer` loads the very same files ftc reads."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fine-tuning a model needs clean data, a good template and careful packing.",
    "Wie geht es dir? Très bien, merci! ¿Qué tal? 你好，世界。こんにちは。",
    "def add(a, b):\n    return a + b  # numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "Emoji 🙂🚀 and symbols © ® ™ — “quotes” ‘single’ … tabs\tand\nnewlines.",
    "User: what is the capital of France? Assistant: Paris is the capital of France.",
] * 20

# SmolLM2-Instruct's chat template (a real template: default system prompt, multi-turn).
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3-Instruct's chat template: bos_token, trimmed contents, `loop.index0`, headers.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def bpe_model_dir(path: Path, template: str = SMOL_TEMPLATE, vocab_size: int = 800) -> Path:
    """A byte-level BPE tokenizer (GPT-2 style) with ChatML and Llama-3 special tokens."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = template
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return path


def wordpiece_model_dir(path: Path, vocab_size: int = 600) -> Path:
    """A BERT-style WordPiece tokenizer: lowercasing, accent stripping, [CLS] … [SEP]."""
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return path


def toml_value(v: object) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def write_spec(path: Path, base: Path | str, sources: list[dict], model: dict | None = None, **tables: dict) -> Path:
    """A spec file: `[model] base` (+ `model` keys), one `[[data.sources]]` per dict, then any other
    tables given as `tokenize={...}`, `data={...}` (scalars of [data]), `data_split={...}` → [data.split]."""
    lines = ['[project]', 'name = "test"', "", "[model]", f"base = {toml_value(str(base))}",
             *(f"{k} = {toml_value(v)}" for k, v in (model or {}).items()), ""]
    for src in sources:
        lines += ["[[data.sources]]", *(f"{k} = {toml_value(v)}" for k, v in src.items()), ""]
    for name, table in tables.items():
        lines += [f"[{name.replace('_', '.')}]", *(f"{k} = {toml_value(v)}" for k, v in table.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def llama_model_dir(path: Path, seed: int = 0, head_dim: int = 8) -> Path:
    """A tiny Llama (random weights) with the byte-level BPE tokenizer and SmolLM2's template.
    Four heads of `head_dim`; onnxruntime's CPU attention (export, runtime) needs a multiple of 16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    bpe_model_dir(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=800, hidden_size=4 * head_dim, intermediate_size=8 * head_dim, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def bert_model_dir(path: Path, seed: int = 0) -> Path:
    """A tiny BERT encoder (random weights) with the WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    wordpiece_model_dir(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    return path


def read_column(tmp: Path, model: Path, source: dict, column: str) -> tuple[list, list]:
    """One source as the data stage reads it: the values of `column` and the quarantined
    (line, reason) rows, in line order."""
    from ftc.sources import read_source, source_files
    from ftc.specload import load_spec

    spec = load_spec(write_spec(tmp / "spec.toml", model, [source]))
    src = spec.data.sources[0]
    values, bad = [], []
    for batch in read_source(src, source_files(src, spec.root)):
        values += batch.rows[column].to_list()
        bad += batch.bad.sort("line").rows()
    return values, bad
