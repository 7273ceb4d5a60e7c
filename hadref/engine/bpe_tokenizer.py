"""The decoder's tokenizer: byte-level BPE run by the ``tokenizers`` library.

A model file stores the Hugging Face ``tokenizer.json`` text; :class:`BPETokenizer` runs it
without adding special tokens (no BOS: SmolLM2's GGUF asks for none) and decodes ids back
to text. :func:`tokenizer_json_from_vocab` builds that JSON from a vocabulary and merges
(what a GGUF file stores); :func:`render_chat` formats a user prompt with a ChatML chat
template (the one SmolLM2 ships; hadref does not run Jinja).
"""

from __future__ import annotations

import json
import re

import numpy as np
import tokenizers

from hadref.engine.tokenizer import Vocabulary
from hadref.errors import HadrefError

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
_SPECIAL_TYPES = (2, 3, 4)

# the pre-tokenizers of the GGUF ``tokenizer.ggml.pre`` names hadref knows
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": True}
PRE_TOKENIZERS = {
    # SmolLM: GPT-2's byte-level split, then each digit alone (the reference library's
    # reading of the GGUF; splitting digits first would cut "\n\n2" as "\n\n" + "2")
    "smollm": {"type": "Sequence",
               "pretokenizers": [_BYTE_LEVEL, {"type": "Digits", "individual_digits": True}]},
    "gpt2": _BYTE_LEVEL,
    "default": _BYTE_LEVEL,
}


def tokenizer_json_from_vocab(tokens: list[str], merges: list[str], token_types=None,
                              pre: str = "default", where: str = "tokenizer") -> str:
    """A byte-level BPE tokenizer.json (str) from tokens (id order), merges ("a b") and the
    GGUF token types (control, unknown and user-defined tokens become special added tokens)."""
    if pre not in PRE_TOKENIZERS:
        raise HadrefError(f"{where}: pre-tokenizer {pre!r} is not supported (hadref knows "
                          f"{', '.join(sorted(PRE_TOKENIZERS))})")
    vocab = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    pairs = []
    for n, merge in enumerate(merges):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise HadrefError(f"{where}: merge {n} ({merge!r}) is not two tokens separated by "
                              "one space")
        pairs.append(parts)
    added = []
    if token_types is not None:
        for i, kind in enumerate(token_types):
            if int(kind) in _SPECIAL_TYPES:
                added.append({"id": i, "content": tokens[i], "single_word": False,
                              "lstrip": False, "rstrip": False, "normalized": False,
                              "special": True})
    data = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": PRE_TOKENIZERS[pre], "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": pairs},
    }
    return json.dumps(data, ensure_ascii=False)


class BPETokenizer(Vocabulary):
    """``BPETokenizer(json_text)``: a byte-level BPE tokenizer.json (str).

    Example::

        ids = model.tokenizer.encode("The capital of France is")   # (t,) int64
        text = model.tokenizer.decode(model.generate(ids, 16))
    """

    def __init__(self, json_text: str, where: str = "tokenizer.json"):
        try:
            self._tok = tokenizers.Tokenizer.from_str(json_text)
        except Exception as err:  # the library raises a bare Exception on bad JSON
            raise HadrefError(f"{where}: not a valid tokenizer.json ({str(err).splitlines()[0]})") from None
        self.json = json_text
        self._tok.no_padding()
        self._tok.no_truncation()

    def encode(self, text: str) -> np.ndarray:
        """text -> (t,) int64 token ids, no special tokens added (special tokens written in
        the text, e.g. ``<|im_start|>``, become their ids)."""
        if not isinstance(text, str):
            raise HadrefError(f"text: expected str, got {type(text).__name__}")
        return np.array(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def tokens(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                skip_special_tokens=skip_special_tokens)


_CHATML = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)


def render_chat(template: str | None, prompt: str, where: str = "chat template") -> str:
    """The text of one user turn followed by the assistant's turn opening, per a ChatML
    template (SmolLM2's: its default system message comes first)."""
    if not template:
        raise HadrefError(f"{where}: the model file has no chat template (drop --chat)")
    if "<|im_start|>" not in template or "<|im_end|>" not in template:
        raise HadrefError(f"{where}: not a ChatML template (hadref renders only "
                          "<|im_start|>role ... <|im_end|> templates)")
    found = _CHATML.search(template)
    text = f"<|im_start|>system\n{found.group(1)}<|im_end|>\n" if found else ""
    return text + f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
