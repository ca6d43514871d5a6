"""Every call into an ONNX exporter or quantizer, behind one module (README: Export), so that
optimum-onnx can take over once it supports transformers 5 (it pins `transformers<4.58` today).

    encoder classifier ─ torch.onnx.export (legacy, eager attention) ─ model.onnx (fp32)
                         ─ transformer optimizer (fused Attention, SkipLayerNorm, Gelu)
                         ─ quantize_dynamic (per-channel QInt8 weights)  ─ model.int8.onnx
    decoder LM         ─ onnxruntime-genai model builder ─ fp32/, int8/, int4/ (GQA, KV cache,
                         MatMulNBits weight-only int8/int4), each a directory `og.Model` loads
                         ─ int4 codes re-rounded by GPTQ (ftc.gptq), written back in place

Why these paths: only graphs from the TorchScript ("legacy") exporter with eager attention are
fused by onnxruntime's transformer optimizer into the Attention ops that run fast in int8; the
dynamo and SDPA graphs stay unfused and ran 20–30% slower at int8 batch 32. The builder is run
as a subprocess: it puts its own directory on `sys.path`, prints freely, and its command line
is the interface its docs promise. Everything here runs on CPU.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ftc.errors import ExportError

TWO_GB = 2_000_000_000  # protobuf's limit on one file; above it weights go to `<name>.data`
# transformers `model_type` → the optimizer's, for encoders whose graphs its BERT fusions match.
OPTIMIZER_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
                   "electra": "bert", "distilbert": "bert", "mpnet": "bert", "ernie": "bert"}
PRECISIONS = ("fp32", "int8", "int4")
RECIPE = 4  # enters the export key: bump it when a change here changes the graphs (2: int4 k-quant, 3: GPTQ,
# 4: act-order GPTQ, 8-bit LM head and EIGHT_BIT layers)


# ── encoders: classification, token classification, question answering ──────────────────────

def graph_inputs(model: Any) -> list[str]:
    """input_ids, attention_mask, and token_type_ids for models that take them (BERT-like)."""
    import inspect

    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    return ["input_ids", "attention_mask", *(["token_type_ids"] if takes_types else [])]


def export_graph(model: Any, path: Path, inputs: list[str], outputs: tuple[str, ...], opset: int | None, *,
                 per_token: bool = False) -> None:
    """`model` (a transformers encoder with a task head, eager attention) → `path`: int64 inputs
    `inputs` with dynamic batch and sequence axes, and the model output's fields `outputs`
    (`logits`, or `start_logits` + `end_logits`), with a sequence axis when `per_token`. The fp32 graph is then fused by the
    transformer optimizer where one applies; the fused graph computes the same outputs
    (checked by the parity stage) and is what int8 quantizes."""
    import torch

    class Head(torch.nn.Module):  # named inputs in, named tensors out: the graph's signature
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            out = self.model(**dict(zip(inputs, tensors, strict=True)))
            return tuple(out[k] for k in outputs)

    scratch = path.parent / f".{path.stem}-raw"
    scratch.mkdir()
    raw = scratch / "model.onnx"
    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in inputs)
    out_axes = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    axes = {n: {0: "batch", 1: "sequence"} for n in inputs} | {n: out_axes for n in outputs}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracing transformers' mask code warns of Python booleans and index ops that are
            # constant on these axes; the parity stage checks the graph's logits instead.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(Head().eval(), dummy, str(raw), input_names=inputs, output_names=list(outputs),
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
    contrib ops (Attention, SkipLayerNormalization) that shape inference cannot. Smoothing the
    activations first (SmoothQuant: per input channel, 1/s on the input and s on the weight
    rows) was measured on the quickstart and hurt: int8 agreement with fp32 98.0% → 94–96%
    for α 0.5–0.85."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def advice(record: logging.LogRecord) -> bool:  # to pre-process first: meant for unfused graphs
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()  # where the quantizer logs it
    root.addFilter(advice)
    try:
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=_size(src.parent, src.name) > 4 * TWO_GB,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    finally:
        root.removeFilter(advice)


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

    int4 is built with k-quant rather than the builder's default round-to-nearest: on SmolLM2-135M
    fine-tuned by specs/chat-sft.toml, test perplexity ×1.084 of PyTorch's against ×1.206
    (lm_head kept in fp32: ×1.198; int8 activations off: no change), at 9% fewer tokens/s.
    The LM head (and tied embeddings, which read its codes) stays 8-bit: at int4 it alone cost
    ×1.096 on a realistic SFT run, at 8 bits ×1.000. `[export] int4_method = "gptq"` (the
    default) then re-rounds the layers' codes in place (`write_nbits`)."""
    import json

    assert precision in PRECISIONS
    cache = out.parent / f".builder-cache-{precision}"
    # hf_remote=false: the builder loads the config and tokenizer; no code from the directory runs
    int4 = ["algo_config=k_quant", "matmul_mixed_precision=last_matmul:int8"] if precision == "int4" else []
    options = ["hf_token=false", "hf_remote=false", *int4]
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


# The builder's MatMulNBits names → the HF linears whose weights it stacks along its outputs.
NBITS_NODE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMul")
STACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def nbits_targets(folder: Path, model: Any, group: int) -> dict[str, list[str]]:
    """MatMulNBits nodes of a builder graph at `group`-column blocks → the names of the
    linears of `model` (a merged HF causal LM) they hold, in stacking order. The LM head is
    left out: with tied embeddings the builder reads the token embeddings from its codes."""
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    targets: dict[str, list[str]] = {}
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        zero_points = len(node.input) > 3 and node.input[3]  # k-quant writes them; GPTQ's grid needs them
        if node.op_type != "MatMulNBits" or attrs.get("bits") not in (4, 8) or attrs.get("block_size") != group \
                or attrs.get("K", 1) % group or not zero_points or not (m := NBITS_NODE.match(node.name)):
            continue
        layer, part, proj = m.groups()
        parent = f"model.layers.{layer}.{'self_attn' if part == 'attn' else 'mlp'}"
        for names in ([f"{parent}.{proj}"], [f"{parent}.{p}" for p in STACKED.get(proj, ())]):
            try:  # the model's own fused linear (Phi-3's qkv_proj), else the ones the builder stacked
                if names and sum(model.get_submodule(n).out_features for n in names) == attrs["N"]:
                    targets[node.name] = names
                    break
            except AttributeError:
                continue  # a layout this mapping does not know keeps the builder's codes
    return targets


def write_nbits(folder: Path, codes: dict[str, Any], group: int) -> None:
    """Replace the quantized weights of MatMulNBits nodes (name → `ftc.gptq.Codes`, rows in the
    node's output order) in a builder graph, in its own layout: per output row, blocks of
    `group` inputs, a float scale and a zero point per block; 4-bit codes and zero points are
    packed two a byte (low nibble first), 8-bit ones a byte each, and a node whose codes are
    8-bit becomes an 8-bit node. Each replacement must approximate the weights it replaces (a
    wrong mapping would not), or nothing is written."""
    import onnx
    from onnx import numpy_helper

    path = folder / "model.onnx"
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in codes:
            continue
        c = codes[node.name]
        q, scale, zero = (t.numpy() for t in (c.q, c.scale, c.zero))
        rows, blocks = scale.shape
        old = _dequantize(*(numpy_helper.to_array(inits[n]) for n in node.input[1:4]), group=group)
        drift = np.linalg.norm(c.dequantize(group).numpy() - old) / max(np.linalg.norm(old), 1e-12)
        if drift > 0.5:
            raise ExportError(f"GPTQ codes for {node.name} do not match the weights the builder quantized "
                              f"(relative difference {drift:.2f})", hint="set `[export] int4_method = \"k-quant\"`")
        pack = _nibbles if c.bits == 4 else np.asarray
        packed = {node.input[1]: pack(q.reshape(rows, blocks, group)), node.input[2]: scale, node.input[3]: pack(zero)}
        for name, value in packed.items():
            before = numpy_helper.to_array(inits[name])
            assert c.bits != 4 or before.shape == value.shape, (name, before.shape, value.shape)
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(before.dtype), name))
        next(a for a in node.attribute if a.name == "bits").i = c.bits
    scratch = folder / ".gptq"
    scratch.mkdir()
    onnx.save_model(model, str(scratch / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data")
    for f in scratch.iterdir():
        f.replace(folder / f.name)
    scratch.rmdir()


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """[..., n] values < 16 → [..., ceil(n / 2)] bytes, element 2j in the low nibble."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), codes.dtype)], -1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _dequantize(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, *, group: int) -> np.ndarray:
    """The weights [rows, K] a MatMulNBits node's codes, scales and zero points hold: 4-bit
    when a row's codes take half a byte per input ([rows, blocks, group / 2]), else 8-bit."""
    rows, blocks = packed.shape[0], packed.shape[1]
    if packed.shape[2] == group:
        q, z = packed.astype(np.float32), zero.reshape(rows, -1)[:, :blocks].astype(np.float32)
    else:
        q = np.stack([packed & 15, packed >> 4], -1).reshape(rows, blocks, group).astype(np.float32)
        z = np.stack([zero & 15, zero >> 4], -1).reshape(rows, -1)[:, :blocks].astype(np.float32)
    return ((q - z[..., None]) * scale.reshape(rows, blocks)[..., None]).reshape(rows, -1)


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
