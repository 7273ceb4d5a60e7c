"""Tokenized sets and batches: dynamic padding, length bucketing, seeded order, resume."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadref.data import BatchStream, encode_split, eval_batches
from hadref.data.glue import Split, get_task
from hadref.errors import HadrefError


class _WordTokenizer:
    """[CLS] words [SEP] (words [SEP]) with ids from word lengths: the encode() interface."""

    def encode(self, texts, text_pairs=None, max_length=128, padding="longest"):
        rows = []
        for i, text in enumerate(texts):
            ids = [101] + [1000 + len(w) for w in text.split()] + [102]
            types = [0] * len(ids)
            if text_pairs is not None:
                second = [2000 + len(w) for w in text_pairs[i].split()] + [102]
                ids, types = ids + second, types + [1] * len(second)
            if len(ids) > max_length:
                ids, types = ids[:max_length - 1] + [102], types[:max_length]
            rows.append((ids, types))
        width = max(len(r[0]) for r in rows)
        out = {k: np.zeros((len(rows), width), np.int64)
               for k in ("input_ids", "token_type_ids", "attention_mask")}
        for r, (ids, types) in enumerate(rows):
            out["input_ids"][r, :len(ids)] = ids
            out["token_type_ids"][r, :len(ids)] = types
            out["attention_mask"][r, :len(ids)] = 1
        return out


def _split(n, seed=0, pair=False):
    rng = np.random.default_rng(seed)
    texts = [" ".join("w" * int(k) for k in rng.integers(1, 6, rng.integers(1, 40)))
             for _ in range(n)]
    task = get_task("rte" if pair else "sst2")
    return Split(task, "gen.tsv", texts, texts[::-1] if pair else None,
                 rng.integers(0, 2, n), np.arange(n) + 2)


def test_encode_ragged_and_truncated():
    split = _split(50, pair=True)
    data = encode_split(split, _WordTokenizer(), max_length=16, chunk=7)
    full = _WordTokenizer().encode(split.texts_a, split.texts_b, max_length=16)
    assert data.lengths.max() <= 16
    assert np.array_equal(data.lengths, full["attention_mask"].sum(1))
    b = data.batch(np.arange(50))
    w = b.input_ids.shape[1]
    assert np.array_equal(b.input_ids, full["input_ids"][:, :w])
    assert np.array_equal(b.token_type_ids, full["token_type_ids"][:, :w])
    with pytest.raises(HadrefError, match="--max-len"):
        encode_split(split, _WordTokenizer(), max_length=2)


def test_batches_padded_to_their_longest_and_bucketed():
    data = encode_split(_split(400), _WordTokenizer())
    stream = BatchStream(data, batch_size=16, seed=3, bucket_batches=5)
    order = stream.epoch_order(0)
    seen = np.concatenate(order)
    assert len(order) == 25 and len(np.unique(seen)) == 400  # each example once
    padded = 0
    for idx in order:
        b = data.batch(idx)
        assert b.input_ids.shape == (16, data.lengths[idx].max())
        assert np.array_equal(b.attention_mask.sum(1), data.lengths[idx])
        padded += b.attention_mask.size
    # bucketing pads far less than random batches of the same size would
    rng = np.random.default_rng(0)
    random_pad = sum(data.lengths[c].max() * 16 for c in np.split(rng.permutation(400), 25))
    assert padded < 0.8 * random_pad


def test_order_seeded_and_resumable():
    data = encode_split(_split(100), _WordTokenizer())
    a, b = BatchStream(data, 8, seed=1), BatchStream(data, 8, seed=1)
    other = BatchStream(data, 8, seed=2)
    first = [a.next().index for _ in range(30)]  # crosses an epoch (12 batches per epoch)
    assert all(np.array_equal(x, b.next().index) for x in first)
    assert not all(np.array_equal(x, other.next().index) for x in first)
    assert a.batches_per_epoch() == 12
    resumed = BatchStream(data, 8, seed=1)
    resumed.restore(a.state())
    assert np.array_equal(resumed.next().index, a.next().index)
    with pytest.raises(HadrefError, match="seed 1 and batch size 8"):
        BatchStream(data, 8, seed=5).restore(a.state())


def test_eval_batches_cover_every_example_once():
    data = encode_split(_split(37), _WordTokenizer())
    idx = np.concatenate([b.index for b in eval_batches(data, 8)])
    assert sorted(idx.tolist()) == list(range(37))




@settings(max_examples=25)
@given(st.integers(1, 90), st.integers(1, 20), st.integers(1, 6), st.integers(0, 3))
def test_epoch_is_a_partition_into_full_batches(n, batch_size, bucket, seed):
    data = encode_split(_split(n, seed=seed), _WordTokenizer())
    order = BatchStream(data, batch_size, seed=seed, bucket_batches=bucket).epoch_order(0)
    seen = np.concatenate(order)
    assert len(np.unique(seen)) == len(seen)            # no example twice
    if n >= batch_size:
        assert all(len(b) == batch_size for b in order)  # only full batches
        assert len(seen) > n - batch_size  # only the last window's short tail is left out
    else:
        assert len(seen) == n
