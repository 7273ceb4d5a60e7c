"""Tokenized GLUE examples and length-bucketed, seeded, dynamically padded batches.

A :class:`Encoded` set holds every example tokenized once, unpadded (ragged arrays with
offsets). :class:`BatchStream` cuts it into training batches: each epoch shuffles the
examples with a generator seeded by ``(seed, epoch)``, sorts windows of
``bucket_batches * batch_size`` examples by length (so a batch holds similar lengths and
little padding), cuts the windows into batches and shuffles the batch order. A batch is
padded to its own longest example only. The order of an epoch is a pure function of
``(seed, epoch)``, so the data position for a resume is just ``(epoch, batch index)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hadref.data.stream import SeededStream
from hadref.errors import HadrefError


@dataclass
class Batch:
    """One padded batch. input_ids, token_type_ids, attention_mask: (B, T) int64 with T the
    longest example of the batch; labels: (B,) int64 or float32; index: (B,) int64 rows of
    the :class:`Encoded` set."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


def _field(encoding, name):
    value = encoding[name] if isinstance(encoding, dict) else getattr(encoding, name)
    return np.asarray(value)


@dataclass
class Encoded:
    """Examples tokenized once. ids: (total,) int32 token ids of all examples back to back;
    types: (total,) int8 token types; offsets: (n+1,) int64; labels: (n,)."""

    ids: np.ndarray
    types: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """(n,) int64 token count of each example (special tokens included)."""
        return np.diff(self.offsets)

    def batch(self, index) -> Batch:
        """Rows ``index`` padded to their longest (pad id 0, token type 0, mask 0)."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(index) else 0
        ids = np.zeros((len(index), width), dtype=np.int64)
        types = np.zeros((len(index), width), dtype=np.int64)
        mask = np.zeros((len(index), width), dtype=np.int64)
        for row, (i, n) in enumerate(zip(index, lengths)):
            start = self.offsets[i]
            ids[row, :n] = self.ids[start:start + n]
            types[row, :n] = self.types[start:start + n]
            mask[row, :n] = 1
        return Batch(ids, types, mask, self.labels[index], index)


def encode_split(split, tokenizer, max_length: int = 128, chunk: int = 2048) -> Encoded:
    """Tokenize a :class:`~hadref.data.glue.Split` with the model's tokenizer.

    ``tokenizer.encode(texts, text_pairs=None, max_length=..., padding="longest")`` must
    return int arrays ``input_ids``, ``token_type_ids``, ``attention_mask`` of shape (n, T)
    (a dict or an object with those attributes), truncating each example to
    ``max_length`` tokens, special tokens included.
    """
    if max_length < 8:
        raise HadrefError(f"--max-len must be at least 8 tokens, got {max_length}")
    n = len(split)
    ids_parts, type_parts, lengths = [], [], np.zeros(n, dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        pairs = None if split.texts_b is None else split.texts_b[start:stop]
        enc = tokenizer.encode(split.texts_a[start:stop], pairs, max_length=max_length,
                               padding="longest")
        mask = _field(enc, "attention_mask").astype(bool)
        ids = _field(enc, "input_ids")
        types = _field(enc, "token_type_ids")
        if ids.shape[1] > max_length:
            raise HadrefError(f"tokenizer returned {ids.shape[1]} tokens, more than --max-len {max_length}")
        lengths[start:stop] = mask.sum(axis=1)
        # padding is on the right (BERT): the valid tokens of a row are its first `length`
        ids_parts.append(ids[mask].astype(np.int32))
        type_parts.append(types[mask].astype(np.int8))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    types = np.concatenate(type_parts) if type_parts else np.zeros(0, np.int8)
    return Encoded(ids, types, offsets, split.labels)


def eval_batches(data: Encoded, batch_size: int):
    """Batches for evaluation: examples sorted by length (least padding), each once.
    Use ``batch.index`` to put predictions back in file order."""
    order = np.argsort(data.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield data.batch(order[start:start + batch_size])


class BatchStream(SeededStream):
    """Endless seeded training batches with a resumable position (:class:`SeededStream`).

    ``epoch_order(epoch)`` is the list of index arrays of one epoch (a pure function of
    seed and epoch); ``next()`` walks it and moves to the next epoch at its end. Every batch
    has exactly ``batch_size`` examples (the last, short one of an epoch is dropped unless
    the data holds fewer examples than one batch).
    """

    def __init__(self, data: Encoded, batch_size: int, seed: int, bucket_batches: int = 50):
        super().__init__(len(data), batch_size, seed, "examples")
        self.data = data
        self.bucket_batches = max(1, int(bucket_batches))

    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.data))
        lengths = self.data.lengths
        window = self.batch_size * self.bucket_batches
        batches = []
        for w in range(0, len(perm), window):
            chunk = perm[w:w + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[b:b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size] or batches
        return [full[i] for i in rng.permutation(len(full))]

    def make_batch(self, indices: np.ndarray) -> Batch:
        return self.data.batch(indices)
