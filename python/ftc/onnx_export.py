"""Every call into an ONNX exporter or quantizer, behind one module (DESIGN §7), so that
optimum-onnx can take over once it supports transformers 5 (it pins `transformers<4.58` today).

    encoder classifier ─ torch.onnx.export (legacy, eager attention) ─ model.onnx (fp32)
                         ─ transformer optimizer (fused Attention, SkipLayerNorm, Gelu)
                         ─ quantize_dynamic (per-channel QInt8 weights)  ─ model.int8.onnx
    decoder LM         ─ onnxruntime-genai model builder ─ fp32/, int8/, int4/ (GQA, KV cache,
                         MatMulNBits weight-only int8/int4), each a directory `og.Model` loads

Why these paths: only graphs from the TorchScript ("legacy") exporter with eager attention are
fused by onnxruntime's transformer optimizer into the Attention ops that run fast in int8; the
dynamo and SDPA graphs stay unfused and ran 20–30% slower at int8 batch 32. The builder is run
as a subprocess: it puts its own directory on `sys.path`, prints freely, and its command line
is the interface its docs promise. Everything here runs on CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ftc.errors import ExportError

TWO_GB = 2_000_000_000  # protobuf's limit on one file; above it weights go to `<name>.data`
# transformers `model_type` → the optimizer's, for encoders whose graphs its BERT fusions match.
OPTIMIZER_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
                   "electra": "bert", "distilbert": "bert", "mpnet": "bert", "ernie": "bert"}
PRECISIONS = ("fp32", "int8", "int4")
RECIPE = 2  # enters the export key: bump it when a change here changes the graphs (2: int4 k-quant)


# ── encoders: classification ─────────────────────────────────────────────────────────────────

def export_classifier(model: Any, path: Path, inputs: list[str], opset: int | None) -> None:
    """`model` (a transformers sequence classifier, eager attention) → `path`: int64 inputs
    `inputs` with dynamic batch and sequence axes, one output `logits` [batch, num_labels].
    The fp32 graph is then fused by the transformer optimizer where one applies; the fused
    graph computes the same logits (checked by the parity stage) and is what int8 quantizes."""
    import torch

    class Logits(torch.nn.Module):  # named inputs in, one tensor out: the graph's signature
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(inputs, tensors, strict=True))).logits

    scratch = path.parent / f".{path.stem}-raw"
    scratch.mkdir()
    raw = scratch / "model.onnx"
    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in inputs)
    axes = {n: {0: "batch", 1: "sequence"} for n in inputs} | {"logits": {0: "batch"}}
    try:
        with torch.no_grad():
            torch.onnx.export(Logits().eval(), dummy, str(raw), input_names=inputs, output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    except Exception as e:  # the exporter raises many types; all mean "this graph does not export"
        shutil.rmtree(scratch, ignore_errors=True)
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                          hint="set `[export] opset` to another version, or `onnx = false` to export merged "
                          "weights only") from None
    large = _size(scratch) > TWO_GB
    optimizer_type = OPTIMIZER_TYPES.get(getattr(model.config, "model_type", ""))
    if optimizer_type:
        from onnxruntime.transformers.optimizer import optimize_model

        cfg = model.config
        fused = optimize_model(str(raw), model_type=optimizer_type, num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size, use_gpu=False)
        fused.save_model_to_file(str(path), use_external_data_format=large)
    else:
        import onnx

        onnx.save_model(onnx.load(str(raw)), str(path), save_as_external_data=large,
                        all_tensors_to_one_file=True, location=f"{path.name}.data")
    shutil.rmtree(scratch, ignore_errors=True)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8: weights per output channel as QInt8 (on MiniLM: cosine to fp32 0.993
    against 0.963 per-tensor, same speed; QUInt8 weights ran 1.6× slower), activations
    quantized at run time. `DefaultTensorType` lets the quantizer type the outputs of fused
    contrib ops (Attention, SkipLayerNormalization) that shape inference cannot."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8,
                     use_external_data_format=_size(src.parent, src.name) > 4 * TWO_GB,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})


def session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the optimizer's fused graphs warn about unused initializers
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ── decoders: onnxruntime-genai ──────────────────────────────────────────────────────────────

def check_decoder(config: Any) -> None:
    """What the builder's CPU graph needs, checked before minutes of work."""
    heads = config.num_attention_heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_size % 16:
        raise ExportError(f"onnxruntime's CPU GroupQueryAttention needs a head size that is a multiple of 16; "
                          f"this model's is {head_size} (hidden {config.hidden_size} / {heads} heads)",
                          hint="export merged weights only (`onnx = false`), or fine-tune a model whose head "
                          "size is 16, 32, 64 or 128")


def build_decoder(hf_dir: Path, out: Path, precision: str, eos_token_ids: list[int]) -> None:
    """A merged HF checkpoint → an onnxruntime-genai model directory at `precision` (fp32, or
    weight-only int8 / int4 MatMulNBits, block size 32, int8 activations on CPU), with the
    tokenizer files, and `eos_token_id` listing every token that ends a turn.

    int4 uses k-quant rather than the builder's default round-to-nearest: on SmolLM2-135M
    fine-tuned by specs/chat-sft.toml, test perplexity ×1.084 of PyTorch's against ×1.206
    (lm_head kept in fp32: ×1.198; int8 activations off: no change), at 9% fewer tokens/s."""
    import json

    assert precision in PRECISIONS
    cache = out.parent / f".builder-cache-{precision}"
    options = ["hf_token=false", *(["algo_config=k_quant"] if precision == "int4" else [])]
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache), "--extra_options", *options]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
        raise ExportError(f"the onnxruntime-genai model builder failed ({precision}):\n{tail}",
                          hint="the builder supports Llama, Mistral, Qwen, Phi, Gemma, SmolLM3, Granite and "
                          "similar decoders; `onnx = false` exports merged weights only")
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if eos_token_ids:
        config["model"]["eos_token_id"] = eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]
    config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def decoder_logits(sess: Any, config: dict[str, Any], ids: np.ndarray) -> np.ndarray:
    """Logits [len, vocab] of one sequence from a builder graph, run as a prefill with an empty
    KV cache (the graph's past inputs at length 0)."""
    d = config["model"]["decoder"]
    feed: dict[str, np.ndarray] = {"input_ids": ids[None].astype(np.int64),
                                   "attention_mask": np.ones((1, len(ids)), np.int64)}
    past = next(i for i in sess.get_inputs() if i.name == d["inputs"]["past_key_names"] % 0)
    dtype = np.float16 if past.type == "tensor(float16)" else np.float32
    empty = np.zeros((1, d["num_key_value_heads"], 0, d["head_size"]), dtype)
    for layer in range(d["num_hidden_layers"]):
        feed[d["inputs"]["past_key_names"] % layer] = empty
        feed[d["inputs"]["past_value_names"] % layer] = empty
    return sess.run([d["outputs"]["logits"]], feed)[0][0].astype(np.float32)


def _size(folder: Path, name: str | None = None) -> int:
    """Bytes of the graph files in `folder` (of `name` and its external data, if given)."""
    return sum(f.stat().st_size for f in folder.iterdir()
               if f.is_file() and (name is None or f.name.startswith(name)))
