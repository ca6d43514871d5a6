"""Writes specs/data/pairs.jsonl: preference pairs from the PyPI package chatterbot-corpus
(BSD-3-Clause, see specs/data/PAIRS-NOTICE.md), for specs/reward.toml and specs/dpo.toml.

Each English conversation's first turn is the prompt and its answer the chosen response; the
rejected response is the answer of a conversation from another topic file, drawn with a fixed
seed: a reply that does not answer. Run from the repository root after
`pip install --no-deps chatterbot-corpus`; the output is committed, so the specs need nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

PAIRS = 800


def main() -> None:
    import chatterbot_corpus

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    turns: list[tuple[str, str, str]] = []  # (topic, prompt, answer)
    for file in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        for conv in doc.get("conversations") or []:
            if len(conv) >= 2 and all(isinstance(t, str) and t.strip() for t in conv[:2]):
                turns.append((file.stem, conv[0].strip(), conv[1].strip()))
    rng = random.Random(0)
    picked = rng.sample(turns, min(PAIRS, len(turns)))
    with open(Path(__file__).parent / "pairs.jsonl", "w", encoding="utf-8") as f:
        for topic, prompt, answer in picked:
            other = rng.choice([t for t in turns if t[0] != topic])
            f.write(json.dumps({"prompt": prompt, "chosen": answer, "rejected": other[2]}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
