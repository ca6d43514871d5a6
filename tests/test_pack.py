"""Packing: every kept token once, rows within max_length, no example split, position ids
restarting at each boundary, identical bytes for any thread count; BFD against a reference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import write_spec

from ftc import _data
from ftc.errors import KernelInputError
from ftc.model import load_tokenizer_info
from ftc.prep import prep
from ftc.specload import load_spec


def reference_pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """The packing of rust/src/pack.rs written plainly: open a row with the longest remaining
    example (lowest index first), fill its gap with one exact example, else the most balanced
    exact pair, else the max-sum subset (preferring long examples)."""
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_len.setdefault(n, []).append(i)
    count = lambda n: len(by_len.get(n, []))  # noqa: E731
    take = lambda n: by_len[n].pop(0)  # noqa: E731
    rows = []
    while any(by_len.values()):
        top = max(n for n, v in by_len.items() if v)
        row, gap = [take(top)], capacity - top
        if gap and any(by_len.values()):
            pair = next(((a, gap - a) for a in range((gap + 1) // 2, gap)
                         if count(a) and count(gap - a) > (a == gap - a)), None)
            if count(gap):
                row.append(take(gap))
            elif pair:
                row += [take(pair[0]), take(pair[1])]
            else:
                row += [take(n) for n in best_subset({n: count(n) for n in range(1, gap + 1)}, gap)]
        rows.append(row)
    return rows


def best_subset(counts: dict[int, int], gap: int) -> list[int]:
    chunks = []
    for n in range(gap, 0, -1):
        c, k = counts[n], 1
        while c:
            m = min(k, c)
            chunks.append((n, m))
            c, k = c - m, k * 2
    states = [1]
    for n, m in chunks:
        states.append((states[-1] | states[-1] << n * m) & ((1 << gap + 1) - 1))
    v = states[-1].bit_length() - 1
    out = []
    for i in range(len(chunks) - 1, -1, -1):
        if not states[i] >> v & 1:
            out += [chunks[i][0]] * chunks[i][1]
            v -= chunks[i][0] * chunks[i][1]
    return out


def reference_bfd_rows(lengths: list[int], capacity: int) -> int:
    """Item-centred best-fit decreasing (what TRL does per batch): the number of rows."""
    room: list[int] = []
    for n in sorted(lengths, reverse=True):
        fits = [r for r in room if r >= n]
        if fits:
            room.remove(min(fits))
            room.append(min(fits) - n)
        else:
            room.append(capacity - n)
    return len(room)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), max_size=300), capacity=st.integers(64, 200))
def test_packing_equals_reference(lengths, capacity):
    offsets, items = (pa.array(a).to_pylist() for a in _data.pack_rows(pa.array(lengths, pa.uint32()), capacity))
    rows = [items[offsets[r]:offsets[r + 1]] for r in range(len(offsets) - 1)]
    assert rows == reference_pack(lengths, capacity)
    assert sorted(items) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows)


def test_fewer_rows_than_item_centred_bfd_on_chat_lengths():
    rng = random.Random(1)
    lengths = [min(512, int(rng.lognormvariate(4.6, 0.7)) + 24) for _ in range(3000)]
    offsets, _ = _data.pack_rows(pa.array(lengths, pa.uint32()), 512)
    ours, lower_bound = len(pa.array(offsets)) - 1, -(-sum(lengths) // 512)
    assert ours <= reference_bfd_rows(lengths, 512)
    assert ours - lower_bound <= 2


def test_example_longer_than_capacity_is_an_error():
    with pytest.raises(KernelInputError, match="more than 8"):
        _data.pack_rows(pa.array([3, 9], pa.uint32()), 8)


@pytest.fixture
def chat_spec(tmp_path: Path, bpe_dir: Path) -> Path:
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    with open(tmp_path / "chat.jsonl", "w") as f:
        for i in range(400):
            conv = []
            for _ in range(rng.choice([1, 1, 2, 3])):
                conv += [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 40)))},
                         {"role": "assistant", "content": f"{i} " + " ".join(rng.choices(words, k=rng.randint(1, 60)))}]
            f.write(json.dumps({"messages": conv}) + "\n")
    return write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "chat.jsonl"}],
                      tokenize={"max_length": 256}, data_split={"valid": 0.1, "test": 0.1})


def read_rows(path: Path) -> dict[str, list]:
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all().to_pydict()


def test_packed_rows_hold_every_example_once(chat_spec: Path, bpe_dir: Path):
    spec = load_spec(chat_spec)
    result = prep(spec, threads=2)
    info = load_tokenizer_info(bpe_dir)
    enc = _data.DataEncoder(info.tokenizer_json, info.model_template, info.special_tokens, info.eos_token)
    from ftc.sources import read_source, source_files

    batch = next(read_source(spec.data.sources[0], source_files(spec.data.sources[0], spec.root)))
    ids, labels, status, _e, _h, _n = (pa.array(a).to_pylist() for a in enc.encode_chat(batch.rows["messages"].to_arrow(), 256))
    expected = sorted((tuple(i), tuple(lab)) for i, lab, s in zip(ids, labels, status, strict=True) if s == 0)
    found = []
    for split in ("train", "valid", "test"):
        rows = read_rows(result.path / f"{split}.arrow")
        for row_ids, row_labels, pos, lengths in zip(rows["input_ids"], rows["labels"], rows["position_ids"],
                                                     rows["seq_lengths"], strict=True):
            assert len(row_ids) <= 256 and len(row_ids) == len(row_labels) == len(pos) == sum(lengths)
            start = 0
            for n in lengths:
                assert pos[start:start + n] == list(range(n))  # restarts at every example
                found.append((tuple(row_ids[start:start + n]), tuple(row_labels[start:start + n])))
                start += n
    assert sorted(found) == expected  # every kept example exactly once, never split
    st = result.manifest["stats"]["splits"]
    assert sum(s["tokens"] for s in st.values()) == sum(len(e[0]) for e in expected)
    assert st["train"]["packing_efficiency"] > 0.9


def test_same_bytes_for_one_and_two_threads(chat_spec: Path, tmp_path: Path, monkeypatch):
    spec = load_spec(chat_spec)
    outputs = []
    for threads in (1, 2):
        monkeypatch.setenv("FTC_HOME", str(tmp_path / f"home{threads}"))
        r = prep(spec, threads=threads)
        outputs.append([(r.path / f"{s}.arrow").read_bytes() for s in ("train", "valid", "test")])
    assert outputs[0] == outputs[1]


def test_unpacked_rows_are_single_examples(chat_spec: Path):
    text = chat_spec.read_text().replace("max_length = 256", "max_length = 256\npack = false")
    chat_spec.write_text(text)
    r = prep(load_spec(chat_spec))
    rows = read_rows(r.path / "train.arrow")
    assert all(len(x) == 1 for x in rows["seq_lengths"])


def test_chunk_mode_concatenates_raw_text(tmp_path: Path, bpe_dir: Path):
    (tmp_path / "corpus.txt").write_text("\n".join(f"line {i} " + "word " * (i % 30) for i in range(200)))
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "corpus.txt"}],
                      tokenize={"max_length": 64, "truncation": "chunk"}, data_split={"valid": 0.0, "test": 0.0})
    r = prep(load_spec(spec))
    rows = read_rows(r.path / "train.arrow")
    lengths = [n for row in rows["seq_lengths"] for n in row]
    assert lengths.count(64) == len(lengths) - 1  # all full blocks but the tail
    flat = [t for row in rows["input_ids"] for t in row]
    eos = json.loads(load_tokenizer_info(bpe_dir).tokenizer_json)["model"]["vocab"]["<|im_end|>"]
    assert flat.count(eos) == 200  # one EOS after every document of the stream
    assert r.manifest["stats"]["tokens"] == len(flat)
    assert rows["input_ids"] == rows["labels"]


def test_chunk_mode_honours_source_weight(tmp_path: Path, bpe_dir: Path):
    (tmp_path / "corpus.txt").write_text("\n".join(f"line {i} " + "word " * (i % 30) for i in range(200)))
    tokens = {}
    for weight in (1.0, 2.0):
        spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "corpus.txt", "weight": weight}],
                          tokenize={"max_length": 64, "truncation": "chunk"}, data_split={"valid": 0.0, "test": 0.0})
        tokens[weight] = prep(load_spec(spec)).manifest["stats"]["tokens"]
    assert tokens[2.0] == 2 * tokens[1.0]


@given(st.lists(st.lists(st.integers(-100, 50_000), max_size=12), max_size=30), st.data())
@settings(max_examples=200, deadline=None)
def test_a_splits_tokens_are_those_arrow_filtering_gives(examples, data):
    from ftc.spool import flat_tokens, gather

    ids = pa.array(examples, pa.list_(pa.int32()))
    keep = data.draw(st.lists(st.booleans(), min_size=len(examples), max_size=len(examples)))
    flat, lengths = flat_tokens(ids)
    got = gather(flat, lengths, np.flatnonzero(np.array(keep, bool)))
    want = pa.compute.filter(ids, pa.array(keep, pa.bool_())).flatten().to_numpy(zero_copy_only=False)
    assert got.dtype == np.int32 and got.tolist() == want.tolist()
    order = data.draw(st.permutations(range(len(examples))))  # any order, repeats (chunked weights)
    assert gather(flat, lengths, np.array(order + order[:2], np.int64)).tolist() == [
        t for i in order + order[:2] for t in examples[i]]


def test_read_ahead_keeps_order_errors_and_stops_with_the_consumer():
    import threading

    from ftc.sources import ahead

    assert list(ahead(iter(range(100)), 2)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("bad batch")

    seen = []
    with pytest.raises(ValueError, match="bad batch"):
        for x in ahead(failing()):
            seen.append(x)
    assert seen == [1]
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = ahead(endless(), 2)
    assert next(it) == 0
    it.close()  # the consumer stops: so does the producer, a few items ahead at most
    assert not [t for t in threading.enumerate() if t.name == "ftc-ahead"] and len(produced) <= 5


@pytest.mark.parametrize("batches", [0, 1, 5])
@pytest.mark.parametrize("direct", [True, False])
def test_split_files_are_the_bytes_arrows_own_writer_writes(tmp_path: Path, monkeypatch, batches: int, direct: bool):
    """`DirectFile` under `pa.ipc.new_stream`: the same bytes as a plain file, across chunk
    boundaries and in the tail, with O_DIRECT and where a file system refuses it mid-write."""
    import errno
    import fcntl
    import os

    from ftc import spool

    monkeypatch.setattr(spool.DirectFile, "CHUNK", 1 << 16)  # many chunks, a partial last one
    rng = np.random.default_rng(batches)
    schema = pa.schema([pa.field(c, pa.list_(pa.int32())) for c in spool.COLUMNS])
    out = []
    for _ in range(batches):
        offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 900, 40))]).astype(np.int32)
        cols = [pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(-100, 50_000, offsets[-1], np.int32)))
                for _ in spool.COLUMNS]
        out.append(pa.record_batch(cols, schema=schema))
    with pa.OSFile(str(tmp_path / "want.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for b in out:
            writer.write_batch(b)
    real_pwrite, refused = os.pwrite, []

    def pwrite(fd, data, at):  # a file system without O_DIRECT, found out at the first write
        if not direct and not refused and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(at)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, at)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with spool.DirectFile(tmp_path / "got.arrow") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for b in out:
            writer.write_batch(b)
    assert (tmp_path / "got.arrow").read_bytes() == (tmp_path / "want.arrow").read_bytes()
    assert pa.ipc.open_stream(tmp_path / "got.arrow").read_all().num_rows == 40 * batches
    try:  # where tmp_path's file system takes O_DIRECT at all
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        supported = True
    except OSError:
        supported = False
    assert sink.direct == (direct and supported) and bool(refused) == (supported and not direct)
