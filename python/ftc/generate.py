"""Generation on the test split, for `[eval] metrics = ["bleu", "rouge"]`.

The test split is stored as token ids with completion labels (packed or not), so the prompts
and references come from the ids themselves, whatever the template was: in each example the
last run of labelled tokens is the reference answer and everything before it the prompt. The
model continues each prompt greedily (left-padded batches, KV cache) until the token that
closes the reference (the template's end of turn) or the model's EOS, or `max_new_tokens`.
An example without labels, or labelled from its first token (raw text, `train_on = "all"`),
has no prompt to answer and is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ftc.rows import IGNORE, pad_id, segments


@dataclass
class Completion:
    prompt: list[int]
    reference: list[int]  # the labelled answer, with the token that closes it (end of turn)


def completions(dataset: Any, limit: int) -> list[Completion]:
    """Up to `limit` (prompt, reference) pairs in split order; see the module docstring."""
    out: list[Completion] = []
    for row in dataset:
        for seg_ids, seg_labels in segments(row):
            labelled = np.flatnonzero(seg_labels != IGNORE)
            if len(labelled) < 2:
                continue
            end = labelled[-1] + 1
            gaps = np.flatnonzero(np.diff(labelled) > 1)
            begin = labelled[gaps[-1] + 1] if len(gaps) else labelled[0]
            if begin == 0:
                continue
            out.append(Completion(seg_ids[:begin].tolist(), seg_ids[begin:end].tolist()))
            if len(out) == limit:
                return out
    return out


def generate(model: Any, items: list[Completion], *, pad_id: int, stops: list[int], max_new_tokens: int,
             batch_size: int) -> list[list[int]]:
    """Greedy continuations of each prompt, up to (without) the first stop token."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out: list[list[int]] = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            width = max(len(c.prompt) for c in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, c in enumerate(chunk):  # left padding: every prompt ends where generation starts
                ids[i, width - len(c.prompt):] = torch.as_tensor(c.prompt)
                mask[i, width - len(c.prompt):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
                                 use_cache=True)
            for row in gen[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                out.append(row[:cut])
    return out


def stop_tokens(tokenizer: Any, end_tokens: list[int], extra: list[int] = ()) -> list[int]:
    """Where generation stops: the tokenizer's EOS, `extra` ids, and the tokens that close
    answers in the data when they are special (a chat template's end of turn, `<|im_end|>`); a
    closing word that is not special would cut answers at every occurrence of it."""
    specials = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    found = [tokenizer.eos_token_id, *extra, *(t for t in end_tokens if t in specials)]
    return list(dict.fromkeys(int(t) for t in found if t is not None))


def text_metrics(model: Any, tokenizer: Any, dataset: Any, metrics: list[str], *, limit: int, max_new_tokens: int,
                 batch_size: int) -> dict[str, Any]:
    """BLEU and/or ROUGE of the model's answers against the references, with a few samples."""
    from ftc import evaluate

    items = completions(dataset, limit)
    if not items:
        return {"generation_skipped": "no example of the test split has a prompt before its labelled answer"}
    stops = stop_tokens(tokenizer, [c.reference[-1] for c in items])
    outputs = generate(model, items, pad_id=pad_id(tokenizer), stops=stops, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    preds = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]
    refs = [tokenizer.decode(c.reference, skip_special_tokens=True).strip() for c in items]
    result: dict[str, Any] = {"generated": len(items)}
    if "bleu" in metrics:
        result["bleu"] = evaluate.bleu(preds, refs)
    if "rouge" in metrics:
        result.update(evaluate.rouge(preds, refs))
    result["generation_samples"] = [
        {"prompt": tokenizer.decode(c.prompt[-200:], skip_special_tokens=False), "reference": r, "prediction": p}
        for c, r, p in list(zip(items, refs, preds, strict=True))[:3]]
    return result
