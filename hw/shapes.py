"""Attention shapes of a hadref model file, for the hardware model (metadata only).

Reads the root attribute ``config`` (JSON) of a hadref HDF5 file (weights/README.md) and,
in a HAD student, the group ``/had`` (attribute ``top_n``, datasets ``sigma_q`` and
``sigma_k`` of shape (L,)); never the weights.

- BERT files (no ``model_type``): ``num_hidden_layers``, ``num_attention_heads``,
  ``hidden_size``; d = hidden / heads; key heads = query heads.
- Decoder files (``"model_type": "llama"``, Hugging Face LlamaConfig names):
  ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads`` (absent = the
  query heads, as in LlamaConfig), ``head_dim`` (absent = hidden / heads), ``hidden_size``.
- Both: ``max_position_embeddings`` (the longest context the model was built for).

``format_version`` is not checked (only metadata is read; the loaders check it).
A missing file, a file that is not HDF5, and a missing or ill-typed field are one-line
:class:`~hadref.errors.HadrefError` naming the file and the field.

>>> s = read_shapes("weights/smollm2-had.h5")            # doctest: +SKIP
>>> (s.layers, s.heads, s.kv_heads, s.dim, s.max_positions)  # doctest: +SKIP
(30, 9, 3, 64, 8192)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadref.checks import is_int
from hadref.errors import HadrefError

FAMILIES = {None: "bert", "bert": "bert", "llama": "llama"}


@dataclass(frozen=True)
class ModelShapes:
    """What the accelerator needs from a model: ``layers`` L, ``heads`` (query heads per
    layer), ``kv_heads`` (key/value heads per layer), ``dim`` d (head size),
    ``max_positions`` (longest context), ``top_n`` (a HAD student's N, else None), the
    ``family`` (bert or llama) and the ``path``."""

    path: str
    family: str
    layers: int
    heads: int
    kv_heads: int
    dim: int
    max_positions: int
    top_n: int | None


def _int_field(config: dict, key: str, where: str, default=None) -> int:
    if key not in config:
        if default is not None:
            return default
        raise HadrefError(f"{where}: missing field '{key}'")
    value = config[key]
    if not is_int(value) or value < 1:
        raise HadrefError(f"{where}: field '{key}' = {value!r}: expected a positive integer")
    return value


def _read_had(f, path: Path, layers: int) -> int:
    g = f["had"]
    if not hasattr(g, "attrs") or not hasattr(g, "keys"):
        raise HadrefError(f"{path}: 'had' is not a group")
    if "top_n" not in g.attrs:
        raise HadrefError(f"{path}: group had: missing attribute 'top_n'")
    top_n = g.attrs["top_n"]
    top_n = top_n.item() if isinstance(top_n, np.generic) else top_n
    if not is_int(top_n) or top_n < 1:
        raise HadrefError(f"{path}: attribute had/top_n = {top_n!r}: expected a positive integer")
    for name in ("sigma_q", "sigma_k"):
        if name not in g:
            raise HadrefError(f"{path}: missing dataset had/{name}")
        ds = g[name]
        if not hasattr(ds, "shape") or ds.shape != (layers,):
            shape = getattr(ds, "shape", "a group")
            raise HadrefError(f"{path}: dataset had/{name} has shape {shape}: expected "
                              f"({layers},), one per layer")
    return int(top_n)


def read_shapes(path) -> ModelShapes:
    """The attention shapes of the hadref model file ``path`` (see the module docstring)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise HadrefError(f"--model {path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise HadrefError(f"--model {path}: not an HDF5 file (make model files with "
                          "`hadref convert`)") from None
    with f:
        if "config" not in f.attrs:
            raise HadrefError(f"{path}: no config attribute: not a hadref model file")
        raw = f.attrs["config"]
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            config = json.loads(raw)
        except (json.JSONDecodeError, TypeError):
            raise HadrefError(f"{path}: attribute config is not valid JSON") from None
        if not isinstance(config, dict):
            raise HadrefError(f"{path}: attribute config: expected a JSON object")
        where = f"{path}: attribute config"
        model_type = config.get("model_type")
        if model_type not in FAMILIES:
            raise HadrefError(f"{where}: field 'model_type' = {model_type!r}: expected "
                              "'llama', 'bert' or none (BERT)")
        family = FAMILIES[model_type]
        layers = _int_field(config, "num_hidden_layers", where)
        heads = _int_field(config, "num_attention_heads", where)
        hidden = _int_field(config, "hidden_size", where)
        positions = _int_field(config, "max_position_embeddings", where)
        if family == "llama":
            kv_heads = _int_field(config, "num_key_value_heads", where, default=heads)
            head_dim = config.get("head_dim")
            dim = (_int_field(config, "head_dim", where) if head_dim is not None
                   else _hidden_over_heads(hidden, heads, where))
        else:
            kv_heads = heads
            dim = _hidden_over_heads(hidden, heads, where)
        if heads % kv_heads:
            raise HadrefError(f"{where}: num_key_value_heads = {kv_heads} does not divide "
                              f"num_attention_heads = {heads}")
        top_n = _read_had(f, path, layers) if "had" in f else None
    return ModelShapes(str(path), family, layers, heads, kv_heads, dim, positions, top_n)


def _hidden_over_heads(hidden: int, heads: int, where: str) -> int:
    if hidden % heads:
        raise HadrefError(f"{where}: hidden_size = {hidden} is not a multiple of "
                          f"num_attention_heads = {heads}")
    return hidden // heads


# The paper's schedule: N = 30 of 256 keys; used when neither --top-n nor the file gives N.
TOP_N_FRACTION = 0.117


def model_design(design, shapes: ModelShapes, seq: int | None = None,
                 top_n: int | None = None):
    """``design`` with the model's layers, query heads, key heads and d; n = ``seq``
    (default: the model's ``max_positions``), N = ``top_n``, else the file's ``had/top_n``,
    else round(0.117 n). Returns (design, top_n_source), the source one of ``option``,
    ``file`` or ``0.117 x seq``.
    """
    n = shapes.max_positions if seq is None else seq
    if n > shapes.max_positions:
        raise HadrefError(f"--seq {n}: exceeds {shapes.path}'s max_position_embeddings "
                          f"({shapes.max_positions})")
    if top_n is not None:
        N, source = top_n, "option"
    elif shapes.top_n is not None:
        N, source = shapes.top_n, "file"
    else:
        N, source = max(1, round(TOP_N_FRACTION * n)), "0.117 x seq"
    if N > n:
        raise HadrefError(f"--top-n {N} ({source}): expected at most --seq ({n})")
    prov = min(n, max(N, design.n_provisioned))
    return design.replace(seq=n, top_n=N, av_rows_provisioned=prov, layers=shapes.layers,
                          heads=shapes.heads, kv_heads=shapes.kv_heads,
                          dim=shapes.dim), source
