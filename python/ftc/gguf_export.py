"""GGUF files of merged decoder weights, for llama.cpp and Ollama (README: Export).

    merged model (fp32, in memory) ─► gguf/model-<type>.gguf   f16 · q8_0 · q4_0
                                   ─► gguf/Modelfile            (ftc.modelfile)

Written with the `gguf` package as llama.cpp's converter lays them out: its tensor names
(`gguf.get_tensor_name_map`), Llama's query and key rows permuted into the rotary layout
llama.cpp computes with, norms kept in f32, and the byte-level BPE tokenizer (tokens, types,
merges, special ids, the pre-tokenizer's llama.cpp name) and chat template as metadata. In
q4_0 the embedding and output matrices stay q8_0, as llama.cpp keeps its output at higher
precision: one 4-bit matrix there costs more perplexity than all the layers together.

Nothing here is trusted: the export reads every file back with transformers' GGUF loader and
runs the same parity check as ONNX on it (`load`), and compares the tokenizer it rebuilds
with the run's on the held-out texts (`tokenizer_mismatches`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ftc import modelfile
from ftc.errors import ExportError

DIR = "gguf"  # in the artifact directory
TYPES = ("f16", "q8_0", "q4_0")
# transformers' model_type → (llama.cpp architecture, whether q/k rows are permuted for its rope)
ARCHS = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
# A Split pre-tokenizer's regex → llama.cpp's name for it (`tokenizer.ggml.pre`); plain
# ByteLevel splitting is GPT-2's.
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE = {_LLAMA3: "llama-bpe", _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}"): "qwen2"}


def file_name(qtype: str) -> str:
    return f"model-{qtype}.gguf"


def variant(qtype: str) -> str:
    """The file's name in the parity table."""
    return f"gguf-{qtype}"


def check(config: Any, tokenizer_file: Path) -> None:
    """What must hold before a GGUF export starts: an architecture llama.cpp and transformers'
    loader share, plain rope, and a byte-level BPE tokenizer."""
    arch = getattr(config, "model_type", None)
    if arch not in ARCHS:
        raise ExportError(f"GGUF export supports {', '.join(ARCHS)} decoders; this model is `{arch}`",
                          hint="export ONNX instead (`--onnx`), or train a Llama-family base (SmolLM2, Qwen2)")
    rope = _rope(config)
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"GGUF export writes plain rope; this model scales it (`{rope.get('rope_type')}`)",
                          hint="export ONNX instead (`--onnx`)")
    spec = json.loads(tokenizer_file.read_text(encoding="utf-8")) if tokenizer_file.is_file() else {}
    kind = spec.get("model", {}).get("type", "missing")
    if kind != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ExportError("GGUF export embeds byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM); "
                          f"this model's is `{kind}` without byte-level splitting", hint="export ONNX instead (`--onnx`)")


def _rope(config: Any) -> dict[str, Any]:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rope if isinstance(rope, dict) else {}


def _merges(model: dict[str, Any]) -> list[str]:
    """tokenizer.json's merges as "a b" strings (newer files store pairs)."""
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


# ── the export's steps ───────────────────────────────────────────────────────────────────────

def write_all(model: Any, tokenizer: Any, tokenizer_file: Path, art: Path, types: list[str], name: str,
              progress: Callable[[str, int, int | None], None]) -> dict[str, Any]:
    """Every GGUF type asked for under `art/gguf/`, each read back: parity name → the model."""
    (art / DIR).mkdir(parents=True, exist_ok=True)
    read_back = {}
    for qtype in types:
        progress(f"gguf {qtype}", 0, 1)
        read_back[variant(qtype)] = load(write(model, tokenizer, tokenizer_file, art / DIR / file_name(qtype), qtype,
                                               name))
        progress(f"gguf {qtype}", 1, 1)
    return read_back


def check_tokenizer(art: Path, tokenizer: Any, rows: list[dict[str, Any]]) -> list[str]:
    """The tokenizer llama.cpp's metadata rebuilds must encode the held-out texts as the run's
    does, and keep its chat template; returns what failed, as parity failures read."""
    path = next((art / DIR).glob("*.gguf"))
    texts = [tokenizer.decode(r["input_ids"]) for r in rows]
    wrong = tokenizer_mismatches(path, tokenizer, texts)
    return [f"gguf: the tokenizer read back from {path.name} differs from the run's on {wrong} of {len(texts)} "
            "held-out texts or in its chat template"] if wrong else []


def finish(art: Path, tokenizer: Any, figures: dict[str, Any], eos: list[int], context: int) -> None:
    """The Modelfile, FROM the smallest GGUF file that passed parity (else the first)."""
    files = sorted((art / DIR).glob("*.gguf"), key=lambda f: f.stat().st_size)
    passed = [f for f in files if figures.get(variant(f.stem.removeprefix("model-")), {}).get("passed")]
    chosen = (passed or files)[0]
    text = modelfile.modelfile(chosen.name, [f.name for f in files if f != chosen], tokenizer, eos, context)
    (art / DIR / "Modelfile").write_text(text, encoding="utf-8")


def card(art: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """The card's `gguf` table: each file, its sha256 and whether it passed parity."""
    from ftc.runtime.artifact import sha256

    return {"modelfile": f"{DIR}/Modelfile",
            "files": {f.stem.removeprefix("model-"): {"path": f"{DIR}/{f.name}", "sha256": sha256(f),
                                                      "bytes": f.stat().st_size,
                                                      "passed": figures[variant(f.stem.removeprefix("model-"))]["passed"]}
                      for f in sorted((art / DIR).glob("*.gguf"))}}


# ── writing ──────────────────────────────────────────────────────────────────────────────────

def write(model: Any, tokenizer: Any, tokenizer_file: Path, path: Path, qtype: str, name: str) -> Path:
    """`model` (a merged causal LM) as a GGUF file of `qtype` at `path`."""
    import gguf

    config = model.config
    arch, permute = ARCHS[config.model_type]
    writer = gguf.GGUFWriter(path, arch)
    _hyperparameters(writer, config, name, qtype)
    _tokenizer(writer, tokenizer, json.loads(tokenizer_file.read_text(encoding="utf-8")), config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads a missing output matrix as tied to the embedding
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ExportError(f"GGUF export has no llama.cpp name for tensor `{hf_name}`",
                              hint="export ONNX instead (`--onnx`)")
        data = tensor.detach().float().cpu().numpy()
        if permute and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _permute(data, heads, heads if "q_proj" in hf_name else kv_heads)
        _add(writer, new, data, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _permute(w: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    """HF's rotary halves → llama.cpp's interleaved pairs, per head (its converter's permute)."""
    return w.reshape(kv_heads, 2, w.shape[0] // kv_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add(writer: Any, name: str, data: np.ndarray, qtype: str) -> None:
    import gguf

    Q = gguf.GGMLQuantizationType
    if data.ndim < 2:  # norms and biases: f32, as llama.cpp keeps them
        writer.add_tensor(name, data.astype(np.float32))
        return
    want = {"f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[qtype]
    if want == Q.Q4_0 and name.startswith(("token_embd", "output.")):
        want = Q.Q8_0
    block = gguf.GGML_QUANT_SIZES[want][0]
    if want == Q.F16 or data.shape[-1] % block:  # a row that does not fill whole blocks stays f16
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, want), raw_dtype=want)


def _hyperparameters(writer: Any, config: Any, name: str, qtype: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = _rope(config)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    F = gguf.LlamaFileType
    writer.add_file_type({"f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer(writer: Any, tokenizer: Any, spec: dict[str, Any], vocab_size: int) -> None:
    """Every id's token (the embedding's padding rows as unused `[PAD<i>]`), its type, the
    merges, the special ids and the chat template."""
    import gguf

    T = gguf.TokenType
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in spec["model"]["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(T.NORMAL if i not in added else T.CONTROL if added[i].get("special") else T.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(spec["model"]))
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        if isinstance(getattr(tokenizer, attr, None), int):
            add(getattr(tokenizer, attr))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def pre_tokenizer(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE (`default` when it has none)."""
    if not pre:
        return "default"
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    for step in pre.get("pretokenizers", []):
        if step.get("type") == "Split" and (pattern := step.get("pattern", {}).get("Regex")) in PRE:
            return PRE[pattern]
    return "default"


# ── reading back ─────────────────────────────────────────────────────────────────────────────

def load(path: Path) -> Any:
    """The GGUF file as transformers' GGUF loader reads it (dequantized to fp32): what parity runs."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def tokenizer_mismatches(path: Path, tokenizer: Any, texts: list[str]) -> int:
    """How many of `texts` the tokenizer rebuilt from the GGUF metadata encodes differently from
    the run's, and whether it keeps the chat template (a mismatch counts as one more)."""
    from transformers import AutoTokenizer

    rebuilt = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = lambda tok: tok(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    wrong = sum(a != b for a, b in zip(ids(rebuilt), ids(tokenizer), strict=True))
    return wrong + int(rebuilt.chat_template != tokenizer.chat_template)
