"""GGUF export: each file read back by transformers' GGUF loader gives the merged model's
logits (f16 to rounding, q8_0 / q4_0 within their parity figures), the tokenizer and chat
template survive, the card lists every file with its sha256, and the Modelfile's Go template
renders what the Jinja template renders."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny import LLAMA3_TEMPLATE, SMOL_TEMPLATE, bpe_model_dir, write_spec

from ftc import build as stages
from ftc import export, gguf_export, modelfile
from ftc.cli import main
from ftc.errors import ArtifactError, ExportError
from ftc.runtime.artifact import read, sha256
from ftc.specload import load_spec


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ftc-home")


@pytest.fixture(autouse=True)
def ftc_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FTC_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def run(home: Path, llama16_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> export.Run:
    rng = random.Random(1)
    words = "the model learns to answer short questions about numbers and code".split()
    rows = [{"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 20))),
             "response": " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))} for _ in range(60)]
    folder = tmp_path_factory.mktemp("lm")
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = write_spec(folder / "spec.toml", llama16_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 128},
                      data_split={"valid": 0.0, "test": 0.2},
                      train={"method": "lora", "max_steps": 3, "batch_size": 2, "learning_rate": 1e-2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_HOME", str(home))
        return export.find_run(stages.build(load_spec(spec)).path)


@pytest.fixture(scope="module")
def exported(run: export.Run, home: Path) -> export.ExportResult:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_HOME", str(home))
        settings = export.override(run.export, gguf=("f16", "q8_0", "q4_0"), rows=8, verify=False)
        return export.export(run, settings)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_every_file_reads_back_as_the_merged_model(exported: export.ExportResult):
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(exported.path / "merged", dtype=torch.float32).eval()
    ids = torch.randint(5, 790, (2, 48), generator=torch.Generator().manual_seed(0))
    want = _logits(merged, ids)
    spread = float(want.std())
    errors = {}
    for qtype in gguf_export.TYPES:
        got = _logits(gguf_export.load(exported.artifact / "gguf" / gguf_export.file_name(qtype)), ids)
        errors[qtype] = float((got - want).abs().mean()) / spread
    # f16 rounds each weight once; q8_0 and q4_0 round coarser, in that order, but stay the same model
    assert errors["f16"] < 0.002 and errors["f16"] < errors["q8_0"] < errors["q4_0"] < 0.2, errors
    parity = exported.manifest["parity"]
    assert parity["gguf-f16"]["passed"] and parity["gguf-f16"]["agreement"] > 0.99
    assert parity["gguf-q4_0"]["perplexity"] >= parity["gguf-f16"]["perplexity"] * 0.98


def test_q_and_k_rows_are_in_llama_cpp_order(exported: export.ExportResult):
    """llama.cpp's rope pairs neighbouring rows: the file holds HF's rows permuted per head."""
    from gguf import GGUFReader
    from safetensors.torch import load_file

    hf = load_file(exported.path / "merged" / "model.safetensors")["model.layers.0.self_attn.k_proj.weight"]
    tensors = {t.name: t for t in GGUFReader(exported.artifact / "gguf" / "model-f16.gguf").tensors}
    k = torch.from_numpy(tensors["blk.0.attn_k.weight"].data.astype("float32")).reshape(hf.shape)
    heads, dim = 2, hf.shape[0] // 2  # the tiny Llama: 2 KV heads of 16
    halves = hf.reshape(heads, 2, dim // 2, -1)  # HF: the first half of each head's rows, then the second
    interleaved = halves.transpose(1, 2).reshape(hf.shape)
    assert torch.allclose(k, interleaved, atol=1e-2) and not torch.allclose(k, hf, atol=1e-2)
    assert "output.weight" in tensors and tensors["token_embd.weight"].tensor_type.name == "F16"


def test_the_tokenizer_and_template_survive(exported: export.ExportResult, run: export.Run):
    from transformers import AutoTokenizer

    path = exported.artifact / "gguf" / "model-q8_0.gguf"
    rebuilt = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = AutoTokenizer.from_pretrained(run.path / "model")
    texts = ["<|im_start|>user\nadd 12 and 345<|im_end|>\n", "def add(a, b):\n    return a + b", "  the  model ü"]
    assert [rebuilt(t)["input_ids"] for t in texts] == [tok(t)["input_ids"] for t in texts]
    assert rebuilt.chat_template == SMOL_TEMPLATE
    assert not exported.manifest["failures"] or all("gguf-q4_0" in f for f in exported.manifest["failures"])


def test_the_card_lists_each_file_and_the_modelfile(exported: export.ExportResult):
    card = json.loads((exported.artifact / "ftc-artifact.json").read_text(encoding="utf-8"))
    files = card["gguf"]["files"]
    assert sorted(files) == ["f16", "q4_0", "q8_0"] and card["variants"] == {} and card["default"] is None
    for qtype, f in files.items():
        assert f["sha256"] == sha256(exported.artifact / f["path"]) == card["files"][f["path"]]
        assert f["passed"] == exported.manifest["parity"][f"gguf-{qtype}"]["passed"]
    text = (exported.artifact / card["gguf"]["modelfile"]).read_text(encoding="utf-8")
    passed = sorted((f for f in files.values() if f["passed"]), key=lambda f: f["bytes"])
    assert f"FROM ./{Path(passed[0]['path']).name}\n" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert 'TEMPLATE """{{ range $i, $m := .Messages }}' in text
    with pytest.raises(ArtifactError, match="GGUF files only"):
        read(exported.artifact)


@pytest.mark.parametrize("template", [SMOL_TEMPLATE, LLAMA3_TEMPLATE])
def test_the_go_template_renders_as_the_jinja_one(template: str, tmp_path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_model_dir(tmp_path / "tok", template))
    wrap = modelfile.wrapping(tok)
    assert wrap is not None
    rng = random.Random(0)
    for _ in range(20):
        turns = rng.randint(1, 4)
        chat = [{"role": r, "content": f"{r} {rng.randint(0, 999)} says {'x' * rng.randint(1, 5)}"}
                for _ in range(turns) for r in ("user", "assistant")][:-1]
        if rng.random() < 0.5:
            chat.insert(0, {"role": "system", "content": "You answer in one word."})
        assert wrap.render(chat) == tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    go = wrap.go()  # the Go text is the same pieces: each wrapping appears as written
    assert all(piece in go for piece in (*wrap.user, *wrap.assistant, *wrap.system, wrap.generation))


def test_a_template_that_counts_turns_gets_no_modelfile_template(tmp_path: Path):
    counting = ("{% for m in messages %}{{ loop.index }}:{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_model_dir(tmp_path / "tok", counting))
    assert modelfile.wrapping(tok) is None
    assert "TEMPLATE" not in modelfile.modelfile("m.gguf", [], tok, [], 128).split("# No TEMPLATE")[0]


def test_tied_embeddings_and_qwen2_biases_round_trip(tmp_path: Path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    bpe_model_dir(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    shared = dict(vocab_size=800, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    models = {"llama": LlamaForCausalLM(LlamaConfig(**shared, tie_word_embeddings=True)),
              "qwen2": Qwen2ForCausalLM(Qwen2Config(**shared, tie_word_embeddings=False))}
    ids = torch.randint(5, 790, (1, 32), generator=torch.Generator().manual_seed(1))
    for name, model in models.items():
        model.eval()
        gguf_export.check(model.config, tmp_path / "tok" / "tokenizer.json")
        path = gguf_export.write(model, tok, tmp_path / "tok" / "tokenizer.json", tmp_path / f"{name}.gguf", "f16", name)
        back = gguf_export.load(path)
        assert type(back) is type(model) and back.config.tie_word_embeddings == model.config.tie_word_embeddings
        diff = float((_logits(back, ids) - _logits(model, ids)).abs().max())
        assert diff < 0.01 * float(_logits(model, ids).std()), (name, diff)


def test_an_encoder_architecture_is_refused(tmp_path: Path, bert_dir: Path):
    from transformers import AutoConfig

    with pytest.raises(ExportError, match="supports llama, mistral, qwen2 decoders; this model is `bert`"):
        gguf_export.check(AutoConfig.from_pretrained(bert_dir), bert_dir / "tokenizer.json")


def test_cli_export_gguf_is_a_cache_hit_the_second_time(run: export.Run, exported: export.ExportResult):
    out = CliRunner().invoke(main, ["export", str(run.path), "--gguf", "q4_0", "--gguf", "f16", "--gguf", "q8_0",
                                    "--rows", "8", "--no-verify", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["cache"] == "hit" and summary["artifact"] == str(exported.artifact)
    assert "ollama create NAME -f" in out.stderr and "gguf-q8_0" in out.stderr
