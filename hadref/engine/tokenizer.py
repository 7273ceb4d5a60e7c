"""The model file's tokenizer: a thin wrapper around the ``tokenizers`` library.

A model file stores the Hugging Face ``tokenizer.json`` text; :class:`Tokenizer` runs it
(BERT WordPiece: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` with token types 0/1,
longest-first truncation) and returns padded int64 arrays ready for ``model.forward``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tokenizers

from hadref.errors import HadrefError


class Encoding(NamedTuple):
    """Tokenizer output, each (B, T) int64: unpacks as ``ids, types, mask = tok.encode(...)``."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray



class Vocabulary:
    """The vocabulary sizes of a tokenizer class that wraps a ``tokenizers.Tokenizer`` as
    ``self._tok`` (the WordPiece :class:`Tokenizer` and the decoder's BPETokenizer)."""

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def id_limit(self) -> int:
        """1 + the largest token id the tokenizer can produce (rows of the embedding table
        it needs)."""
        ids = self._tok.get_vocab(with_added_tokens=True).values()
        return 1 + max(ids, default=-1)

class Tokenizer(Vocabulary):
    """``Tokenizer(json_text)``: the tokenizer.json of a model (str).

    Example::

        enc = model.tokenizer.encode(["a sentence"], max_length=64)
        out = model.forward(enc.input_ids, enc.attention_mask, enc.token_type_ids)
    """

    def __init__(self, json_text: str, where: str = "tokenizer.json"):
        try:
            self._tok = tokenizers.Tokenizer.from_str(json_text)
        except Exception as err:  # the library raises a bare Exception on bad JSON
            raise HadrefError(f"{where}: not a valid tokenizer.json ({str(err).splitlines()[0]})") from None
        self.json = json_text
        padding = self._tok.padding or {}
        self.pad_id = int(padding.get("pad_id", self._tok.token_to_id("[PAD]") or 0))
        self.pad_token = padding.get("pad_token", "[PAD]")
        self._tok.no_padding()
        self._tok.no_truncation()

    @classmethod
    def from_vocab(cls, vocab_path, lowercase: bool = True) -> "Tokenizer":
        """A BERT WordPiece tokenizer built from a vocab.txt (folders without tokenizer.json)."""
        from tokenizers.implementations import BertWordPieceTokenizer

        try:
            built = BertWordPieceTokenizer(str(vocab_path), lowercase=lowercase)
        except Exception as err:
            raise HadrefError(f"{vocab_path}: cannot build a WordPiece tokenizer "
                              f"({str(err).splitlines()[0]})") from None
        return cls(built._tokenizer.to_str(), where=str(vocab_path))


    def encode(self, texts, text_pairs=None, max_length: int = 128,
               padding: str = "longest") -> Encoding:
        """Tokenize a batch of texts (or text pairs).

        texts: list of B str (a single str is a batch of one); text_pairs: None or a list
        of B str (second segments, token type 1). Sequences longer than max_length tokens
        (special tokens included) are truncated longest-first. padding: "longest" (to the
        longest sequence of the batch) or "max_length". Returns :class:`Encoding` with
        input_ids, token_type_ids, attention_mask, each (B, T) int64.
        """
        if isinstance(texts, str):
            texts = [texts]
            if isinstance(text_pairs, str):
                text_pairs = [text_pairs]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise HadrefError("texts: expected a list of str")
        if not isinstance(max_length, (int, np.integer)) or max_length < 3:
            raise HadrefError(f"max_length: expected an integer >= 3, got {max_length!r}")
        if padding not in ("longest", "max_length"):
            raise HadrefError(f"padding: expected 'longest' or 'max_length', got {padding!r}")
        if text_pairs is not None:
            text_pairs = list(text_pairs)
            if len(text_pairs) != len(texts) or not all(isinstance(t, str) for t in text_pairs):
                raise HadrefError(f"text_pairs: expected a list of {len(texts)} str (one per text)")
            batch = list(zip(texts, text_pairs))
        else:
            batch = texts
        self._tok.enable_truncation(int(max_length), strategy="longest_first")
        self._tok.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token,
                                 length=int(max_length) if padding == "max_length" else None)
        try:
            encoded = self._tok.encode_batch(batch)
        finally:
            self._tok.no_padding()
            self._tok.no_truncation()
        if not encoded:
            empty = np.zeros((0, 0), dtype=np.int64)
            return Encoding(empty, empty.copy(), empty.copy())
        return Encoding(np.array([e.ids for e in encoded], dtype=np.int64),
                        np.array([e.type_ids for e in encoded], dtype=np.int64),
                        np.array([e.attention_mask for e in encoded], dtype=np.int64))

    def tokens(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, special tokens included."""
        return self._tok.encode(text).tokens
