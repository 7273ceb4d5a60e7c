"""BertModel: the hand-written NumPy BERT encoder (+ pooler, + classifier head).

Parameters live in one flat dict ``model.params`` keyed by the Hugging Face state-dict
names without the ``bert.`` prefix (``encoder.layer.0.attention.self.query.weight``, ...);
``model.backward`` returns gradients under the same keys, so the optimizer, import and
export all see one structure. A training step reads top to bottom::

    out = model.forward(ids, mask, types, train=True, rng=rng)
    loss, dlogits = softmax_cross_entropy(out.logits, labels)
    grads = model.backward(dlogits=dlogits)
    clip_grad_norm(grads, 0.5); adam.step(grads)
"""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from hadref.checks import check_param_shapes
from hadref.engine.config import BertConfig
from hadref.engine.layers.attention import FloatAttentionCore
from hadref.engine.layers.classifier import classifier_backward, classifier_forward
from hadref.engine.layers.embeddings import embeddings_backward, embeddings_forward
from hadref.engine.layers.encoder_layer import encoder_layer_backward, encoder_layer_forward
from hadref.engine.layers.pooler import pooler_backward, pooler_forward
from hadref.errors import HadrefError


class BertCache(NamedTuple):
    """What a ``train=True`` forward keeps for :meth:`BertModel.backward`."""

    embeddings: object   # EmbeddingsCache
    layers: list         # one EncoderLayerCache per layer
    pooler: object       # PoolerCache or None
    head: object         # ClassifierCache or None
    shape: tuple         # (B, T, H) of the last hidden state


@dataclass
class ModelOutput:
    """What ``BertModel.forward`` returns (float arrays in the model's dtype).

    last_hidden_state (B, T, H); pooled (B, H) or None (no pooler); logits (B, C) or None
    (no head); attentions: list of L (B, h, T, T) probabilities when asked, else None;
    scores: list of L (B, h, T, T) scaled logits of the attention core when asked, else None.
    """

    last_hidden_state: np.ndarray
    pooled: np.ndarray | None = None
    logits: np.ndarray | None = None
    attentions: list | None = None
    scores: list | None = None


def expected_shapes(config: BertConfig, pooler: bool = True) -> dict[str, tuple]:
    """{parameter name: shape} of an encoder with this config (+ pooler, + head if num_labels)."""
    h, inner = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[p + name + ".weight"] = (h, h)
            shapes[p + name + ".bias"] = (h,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = (h,)
            shapes[p + name + ".bias"] = (h,)
        shapes[p + "intermediate.dense.weight"] = (inner, h)
        shapes[p + "intermediate.dense.bias"] = (inner,)
        shapes[p + "output.dense.weight"] = (h, inner)
        shapes[p + "output.dense.bias"] = (h,)
    if pooler or config.num_labels is not None:
        shapes["pooler.dense.weight"] = (h, h)
        shapes["pooler.dense.bias"] = (h,)
    if config.num_labels is not None:
        shapes["classifier.weight"] = (config.num_labels, h)
        shapes["classifier.bias"] = (config.num_labels,)
    return shapes


def check_params(params: dict, config: BertConfig, where: str = "parameters",
                 kind: str = "parameter", prefix: str = "") -> None:
    """Raise HadrefError naming the first missing, extra, mis-shaped or non-finite parameter.

    where: the file (or "parameters"); kind/prefix: how the message names one entry
    (e.g. kind="dataset", prefix="params/" for our HDF5 files).
    """
    check_param_shapes(params, expected_shapes(config, pooler="pooler.dense.weight" in params),
                       where, kind, prefix)


class BertModel:
    """A BERT encoder with optional pooler and classifier head.

    ``BertModel(config, params, tokenizer=None)``: params {name: array} as described in the
    module docstring, all of one float dtype (float32 by default; ``astype(np.float64)``
    for gradient checks). ``hadref.load(path)`` is the usual way to get one.

    Attributes: ``config`` (BertConfig), ``params``, ``tokenizer`` (hadref.engine.tokenizer.
    Tokenizer or None), ``attention_core`` (FloatAttentionCore by default; settable),
    ``had`` (the HAD metadata dict of a HAD student file, else None), ``provenance``
    (what made the file: hadref.train.provenance; None when unknown), ``rng`` (the
    generator dropout uses when ``forward(train=True)`` gets no ``rng``).
    """

    def __init__(self, config: BertConfig, params: dict, tokenizer=None):
        check_params(params, config)
        dtypes = {v.dtype for v in params.values()}
        if len(dtypes) != 1:
            raise HadrefError(f"parameters: expected one float dtype, got {sorted(map(str, dtypes))}")
        self.config = config
        self.params = {name: np.ascontiguousarray(value) for name, value in params.items()}
        self.tokenizer = tokenizer
        self.attention_core = FloatAttentionCore()
        self.had = None
        self.provenance = None
        self.rng = np.random.default_rng(0)
        self._cache = None

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def random(cls, config: BertConfig, seed: int = 0, dtype=np.float32,
               pooler: bool = True) -> "BertModel":
        """A freshly initialized model (Hugging Face's init: N(0, initializer_range)
        weights and embeddings, zero biases, LayerNorm weight 1)."""
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in expected_shapes(config, pooler).items():
            if name.endswith("LayerNorm.weight"):
                value = np.ones(shape)
            elif name.endswith(".bias"):
                value = np.zeros(shape)
            else:
                value = rng.normal(0.0, config.initializer_range, size=shape)
            params[name] = value.astype(dtype)
        return cls(config, params)

    def add_classifier(self, num_labels: int, seed: int = 0) -> None:
        """Attach a fresh classification head (weight N(0, initializer_range), bias 0) with
        num_labels outputs (1 = regression); adds a fresh pooler too if there is none."""
        rng = np.random.default_rng(seed)
        h, dtype, std = self.config.hidden_size, self.dtype, self.config.initializer_range
        config = BertConfig.from_dict({**self.config.to_dict(), "num_labels": int(num_labels)})
        if "pooler.dense.weight" not in self.params:
            self.params["pooler.dense.weight"] = rng.normal(0.0, std, (h, h)).astype(dtype)
            self.params["pooler.dense.bias"] = np.zeros(h, dtype)
        self.params["classifier.weight"] = rng.normal(0.0, std, (num_labels, h)).astype(dtype)
        self.params["classifier.bias"] = np.zeros(num_labels, dtype)
        self.config = config
        self._cache = None

    def astype(self, dtype) -> "BertModel":
        """A copy with every parameter cast to dtype (same tokenizer, core and had)."""
        other = self.copy()
        other.params = {n: v.astype(dtype) for n, v in other.params.items()}
        return other

    def copy(self) -> "BertModel":
        """A deep copy of the parameters and config; tokenizer shared, core copied."""
        other = BertModel.__new__(BertModel)
        other.config = BertConfig.from_dict(self.config.to_dict())
        other.params = {n: v.copy() for n, v in self.params.items()}
        other.tokenizer = self.tokenizer
        other.attention_core = _copy.deepcopy(self.attention_core)
        other.had = _copy.deepcopy(self.had)
        other.provenance = _copy.deepcopy(getattr(self, "provenance", None))
        other.rng = np.random.default_rng(0)
        other._cache = None
        return other

    # --- facts -----------------------------------------------------------------------------

    @property
    def dtype(self):
        return self.params["embeddings.word_embeddings.weight"].dtype

    @property
    def has_pooler(self) -> bool:
        return "pooler.dense.weight" in self.params

    @property
    def num_labels(self) -> int | None:
        """The head's output size, or None without a head."""
        w = self.params.get("classifier.weight")
        return None if w is None else w.shape[0]

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    # --- forward / backward ----------------------------------------------------------------

    def _check_inputs(self, input_ids, attention_mask, token_type_ids):
        cfg = self.config
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise HadrefError(f"input_ids: expected a (batch, tokens) integer array, got shape "
                              f"{ids.shape} dtype {ids.dtype}")
        nb, nt = ids.shape
        if nt > cfg.max_position_embeddings:
            raise HadrefError(f"input_ids: sequence length {nt} exceeds the position table "
                              f"(max_position_embeddings = {cfg.max_position_embeddings})")
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise HadrefError(f"input_ids: token ids must be in [0, {cfg.vocab_size}), got "
                              f"{ids.min()}..{ids.max()}")
        if attention_mask is None:
            key_mask = np.ones((nb, nt), dtype=bool)
        else:
            mask = np.asarray(attention_mask)
            if mask.shape != ids.shape:
                raise HadrefError(f"attention_mask: expected shape {ids.shape}, got {mask.shape}")
            key_mask = np.ascontiguousarray(mask != 0)
        if token_type_ids is None:
            types = np.zeros((nb, nt), dtype=np.int64)
        else:
            types = np.asarray(token_type_ids)
            if types.shape != ids.shape or not np.issubdtype(types.dtype, np.integer):
                raise HadrefError(f"token_type_ids: expected an integer array of shape "
                                  f"{ids.shape}, got shape {types.shape} dtype {types.dtype}")
            if types.size and (types.min() < 0 or types.max() >= cfg.type_vocab_size):
                raise HadrefError(f"token_type_ids: must be in [0, {cfg.type_vocab_size}), got "
                                  f"{types.min()}..{types.max()}")
        return (np.ascontiguousarray(ids, dtype=np.int64), key_mask,
                np.ascontiguousarray(types, dtype=np.int64))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None,
                output_attentions=False, output_scores=False, train=False, rng=None):
        """Run the encoder (+ pooler, + head).

        input_ids (B, T) int; attention_mask (B, T) int or bool (nonzero = valid token;
        None = all valid); token_type_ids (B, T) int or None (all 0). ``train=True``
        enables dropout (drawn from ``rng``, a numpy Generator, or ``self.rng``) and keeps
        the cache that :meth:`backward` uses. Returns :class:`ModelOutput`.
        """
        ids, key_mask, types = self._check_inputs(input_ids, attention_mask, token_type_ids)
        cfg, params, core = self.config, self.params, self.attention_core
        if rng is None:
            rng = self.rng
        x, emb_cache = embeddings_forward(ids, types, params, cfg.layer_norm_eps,
                                          cfg.hidden_dropout_prob, rng, train)
        layer_caches, attentions, scores = [], [], []
        for layer in range(cfg.num_hidden_layers):
            x, cache, aux = encoder_layer_forward(x, params, layer, cfg, key_mask, core,
                                                  output_scores, rng, train)
            if train:
                layer_caches.append(cache)
            if output_attentions:
                attentions.append(aux["probs"])
            if output_scores:
                scores.append(aux["scores"])
        pooled = logits = pool_cache = head_cache = None
        if self.has_pooler:
            pooled, pool_cache = pooler_forward(x, params)
        if self.num_labels is not None:
            logits, head_cache = classifier_forward(pooled, params, cfg.hidden_dropout_prob,
                                                    rng, train)
        if train:
            self._cache = BertCache(emb_cache, layer_caches, pool_cache, head_cache, x.shape)
        return ModelOutput(x, pooled, logits, attentions if output_attentions else None,
                           scores if output_scores else None)

    def backward(self, dlogits=None, dhidden=None, dscores=None) -> dict:
        """Gradients of the last ``forward(train=True)``; the cache is consumed.

        dlogits (B, C): gradient w.r.t. the logits; dhidden (B, T, H): w.r.t. the last
        hidden state; dscores: list of L arrays (B, h, T, T) (or None entries) w.r.t.
        ``out.scores``. Returns {name: gradient} with exactly the keys of ``model.params``
        (zeros for parameters the given gradients do not reach).
        """
        if self._cache is None:
            raise HadrefError("backward: no cache; call forward(..., train=True) first "
                              "(each backward consumes the cache of one forward)")
        if dlogits is None and dhidden is None and dscores is None:
            raise HadrefError("backward: give at least one of dlogits, dhidden, dscores")
        emb_cache, layer_caches, pool_cache, head_cache, shape = self._cache
        self._cache = None
        grads = {}
        dx = np.zeros(shape, dtype=self.dtype)
        if dlogits is not None:
            if head_cache is None:
                raise HadrefError("backward: dlogits given but the model has no classifier head")
            dpooled, head_grads = classifier_backward(np.asarray(dlogits, self.dtype), head_cache)
            dx_pool, pool_grads = pooler_backward(dpooled, pool_cache)
            dx += dx_pool
            grads.update(head_grads)
            grads.update(pool_grads)
        if dhidden is not None:
            dx += dhidden
        if dscores is not None and len(dscores) != len(layer_caches):
            raise HadrefError(f"backward: dscores must have {len(layer_caches)} entries "
                              f"(one per layer), got {len(dscores)}")
        for layer in reversed(range(len(layer_caches))):
            ds = None if dscores is None else dscores[layer]
            # without dhidden, the last layer's output gradient is the pooler's: [CLS] only
            tokens = (slice(0, 1) if layer == len(layer_caches) - 1 and dhidden is None
                      and ds is None else None)
            dx, layer_grads = encoder_layer_backward(dx, layer_caches[layer], ds, tokens)
            grads.update(layer_grads)
        grads.update(embeddings_backward(dx, emb_cache))
        for name, value in self.params.items():
            if name not in grads:
                grads[name] = np.zeros_like(value)
        return {name: grads[name] for name in self.params}

    def __repr__(self):
        cfg = self.config
        head = f", head {self.num_labels}" if self.num_labels is not None else ""
        return (f"BertModel(L={cfg.num_hidden_layers}, H={cfg.hidden_size}, "
                f"heads={cfg.num_attention_heads}, {self.num_parameters():,} params, "
                f"{self.dtype}{head}, core={type(self.attention_core).__name__})")
