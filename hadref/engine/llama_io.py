"""Decoder model files: our HDF5 layout for LlamaModel, and Hugging Face Llama folders.

Layout (format_version 1, as for BERT files; the config says the family)::

    /                  attrs: format_version = 1, config = JSON (LlamaConfig fields,
                       "model_type": "llama"), chat_template = str (optional)
    /params/<name>     float32, Hugging Face LlamaModel names without "model."
                       (embed_tokens.weight, layers.{i}.self_attn.q_proj.weight, ...,
                       norm.weight); a tied LM head stores nothing extra
    /tokenizer.json    uint8 bytes of the byte-level BPE tokenizer.json (optional)

BERT files have no model_type and read as before; :func:`hadref.engine.io.load` picks the class.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from hadref.engine.llama import LlamaModel, check_params
from hadref.engine.llama_config import LlamaConfig
from hadref.errors import HadrefError

FORMAT_VERSION = 1


def save_llama(model: LlamaModel, path, atomic_h5) -> Path:
    """Write model to path (.h5) through atomic_h5(path, write) (temp file + rename)."""
    path = Path(path)
    check_params(model.params, model.config)

    def write(f):
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(model.config.to_dict(), sort_keys=True)
        if model.chat_template is not None:
            f.attrs["chat_template"] = model.chat_template
        group = f.create_group("params")
        for name in sorted(model.params):
            group.create_dataset(name, data=np.asarray(model.params[name], dtype=np.float32),
                                 track_times=False)
        if model.tokenizer is not None:
            f.create_dataset("tokenizer.json", track_times=False,
                             data=np.frombuffer(model.tokenizer.json.encode("utf-8"), np.uint8))

    atomic_h5(path, write)
    return path


def load_llama(f: h5py.File, path, data: dict, dtype=np.float32) -> LlamaModel:
    """The LlamaModel of an open file whose config dict (data) says model_type llama."""
    from hadref.engine.bpe_tokenizer import BPETokenizer

    config = LlamaConfig.from_dict(data, where=f"{path}: attribute config")
    if "params" not in f or not isinstance(f["params"], h5py.Group):
        raise HadrefError(f"{path}: no 'params' group (not a hadref model file)")
    params = {}
    for name, ds in _datasets(f["params"]):
        if not np.issubdtype(ds.dtype, np.floating):
            raise HadrefError(f"{path}: dataset params/{name} is not a float array")
        params[name] = np.asarray(ds[()], dtype=dtype)
    check_params(params, config, where=str(path), kind="dataset", prefix="params/")
    tokenizer = None
    if "tokenizer.json" in f:
        try:
            text = np.asarray(f["tokenizer.json"][()], dtype=np.uint8).tobytes().decode("utf-8")
        except (UnicodeDecodeError, ValueError, TypeError):
            raise HadrefError(f"{path}: dataset tokenizer.json is not UTF-8 bytes") from None
        tokenizer = BPETokenizer(text, where=f"{path}: dataset tokenizer.json")
    template = f.attrs.get("chat_template")
    if isinstance(template, bytes):
        template = template.decode("utf-8")
    return LlamaModel(config, params, tokenizer, None if template is None else str(template))


def _datasets(group, prefix=""):
    """(name, dataset) for every dataset under group; names joined with '/' (HDF5 keeps
    'layers.0.x' flat, so this is one level in our files)."""
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            yield prefix + key, item
        else:
            yield from _datasets(item, prefix + key + "/")


def describe_llama(f: h5py.File, path, data: dict) -> dict:
    config = LlamaConfig.from_dict(data, where=f"{path}: attribute config")
    count = int(sum(ds.size for _, ds in _datasets(f["params"]))) if "params" in f else 0
    return {"path": str(path), "format_version": int(f.attrs["format_version"]),
            "family": "llama", "config": config.to_dict(), "parameters": count,
            "tokenizer": "tokenizer.json" in f, "chat_template": "chat_template" in f.attrs,
            "head": None, "pooler": False, "had": None}


def read_hf_llama(folder: Path, data: dict) -> LlamaModel:
    """A Hugging Face LlamaForCausalLM folder (config.json already parsed into data,
    model.safetensors, tokenizer.json, tokenizer_config.json) -> LlamaModel (float32)."""
    from hadref.engine.bpe_tokenizer import BPETokenizer
    from hadref.engine.io import _read_safetensors

    config = LlamaConfig.from_dict(data, where=str(folder / "config.json"))
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise HadrefError(f"{folder}: no model.safetensors in this folder")
    params = {}
    for name, value in _read_safetensors(weights).items():
        short = name[len("model."):] if name.startswith("model.") else name
        if short.endswith("rotary_emb.inv_freq"):
            continue  # a buffer of old checkpoints
        if short == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the tied head is the embedding
        if not np.issubdtype(value.dtype, np.floating):
            raise HadrefError(f"{weights}: tensor {name!r} has dtype {value.dtype}, expected float")
        params[short] = np.ascontiguousarray(value, dtype=np.float32)
    check_params(params, config, where=str(weights), kind="tensor")
    tokenizer = template = None
    if (folder / "tokenizer.json").exists():
        tokenizer = BPETokenizer((folder / "tokenizer.json").read_text(encoding="utf-8"),
                                 where=str(folder / "tokenizer.json"))
    tok_config = folder / "tokenizer_config.json"
    if tok_config.exists():
        try:
            template = json.loads(tok_config.read_text()).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HadrefError(f"{tok_config}: not valid JSON") from None
        if not isinstance(template, str):
            template = None
    return LlamaModel(config, params, tokenizer, template)
