"""LlamaModel: the hand-written NumPy Llama-family decoder (SmolLM2 and kin).

Parameters live in one flat dict ``model.params`` keyed by the Hugging Face LlamaModel
state-dict names without the ``model.`` prefix::

    embed_tokens.weight                         (V, H)
    layers.{i}.input_layernorm.weight           (H,)
    layers.{i}.self_attn.{q,k,v,o}_proj.weight  (h_q d, H), (h_kv d, H) x2, (H, h_q d)
    layers.{i}.post_attention_layernorm.weight  (H,)
    layers.{i}.mlp.{gate,up,down}_proj.weight   (I, H) x2, (H, I)
    norm.weight                                 (H,)
    lm_head.weight                              (V, H), only when not tie_word_embeddings

A decoder layer is x + attn(rmsnorm(x)), then x + mlp(rmsnorm(x)); the logits are
rmsnorm(x) E^T with the tied embedding E. A training step reads top to bottom::

    out = model.forward(ids, mask, train=True)
    loss, dlogits = my_loss(out.logits)
    grads = model.backward(dlogits)

Inference never holds (T, T) scores per head for all layers: each layer's attention core
walks its queries in blocks (hadref.engine.layers.causal_attention) and nothing of a layer
is kept once the next one runs.
"""

from __future__ import annotations

import copy as _copy
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from hadref.checks import check_param_shapes
from hadref.engine import elementwise
from hadref.engine.config import LlamaConfig
from hadref.engine.layers.causal_attention import (
    CausalFloatAttentionCore,
    causal_attention_backward,
    causal_attention_forward,
)
from hadref.engine.layers.rmsnorm import rmsnorm_backward, rmsnorm_forward
from hadref.engine.layers.rope import rope_tables
from hadref.engine.layers.swiglu import mlp_backward, mlp_forward
from hadref.errors import HadrefError

EMBED = "embed_tokens.weight"
NORM = "norm.weight"
LM_HEAD = "lm_head.weight"


@dataclass
class DecoderOutput:
    """What ``LlamaModel.forward`` returns.

    logits (B, T, V) float32 (None when ``compute_logits=False``); last_hidden_state
    (B, T, H) after the final RMSNorm; hidden_states (when asked): L + 1 arrays (B, T, H)
    in the reference library's convention: the embeddings, the output of layers 1..L-1,
    then the final normed state (= last_hidden_state).
    """

    logits: np.ndarray | None
    last_hidden_state: np.ndarray
    hidden_states: list | None = None


class LayerCache(NamedTuple):
    """What one decoder layer's forward saves for its backward."""

    attn_norm: tuple
    attn: tuple
    mlp_norm: tuple
    mlp: tuple


class ModelCache(NamedTuple):
    """What ``forward(train=True)`` saves: ids (B, T), the layers' caches, the final norm's
    cache and the normed state that the LM head read."""

    input_ids: np.ndarray
    layers: list
    norm: tuple
    normed: np.ndarray


def expected_shapes(config: LlamaConfig) -> dict[str, tuple]:
    """{parameter name: shape} of a decoder with this config."""
    h, inner, d = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    shapes = {EMBED: (config.vocab_size, h)}
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (q, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (inner, h)
        shapes[p + "mlp.up_proj.weight"] = (inner, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inner)
    shapes[NORM] = (h,)
    if not config.tie_word_embeddings:
        shapes[LM_HEAD] = (config.vocab_size, h)
    return shapes


def check_params(params: dict, config: LlamaConfig, where: str = "parameters",
                 kind: str = "parameter", prefix: str = "") -> None:
    """Raise HadrefError naming the first missing, extra, mis-shaped or non-finite parameter."""
    check_param_shapes(params, expected_shapes(config), where, kind, prefix)


class LlamaModel:
    """A Llama-family decoder with a (tied) LM head.

    ``LlamaModel(config, params, tokenizer=None, chat_template=None)``: params as in the
    module docstring, all of one float dtype. ``hadref.load(path)`` is the usual way to get
    one. Attributes: ``config``, ``params``, ``tokenizer`` (hadref.engine.bpe_tokenizer.
    BPETokenizer or None), ``chat_template`` (str or None), ``attention_core``
    (CausalFloatAttentionCore by default; settable), ``had`` (a HAD student's metadata,
    see :func:`hadref.engine.io.save`; None for a float model).
    """

    family = "llama"

    def __init__(self, config: LlamaConfig, params: dict, tokenizer=None, chat_template=None):
        check_params(params, config)
        dtypes = {v.dtype for v in params.values()}
        if len(dtypes) != 1:
            raise HadrefError(f"parameters: expected one float dtype, got {sorted(map(str, dtypes))}")
        self.config = config
        self.params = {name: np.ascontiguousarray(value) for name, value in params.items()}
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.attention_core = CausalFloatAttentionCore()
        self.had = None  # HAD student metadata (hadref.engine.io), None for a float model
        self._cache = None

    @classmethod
    def random(cls, config: LlamaConfig, seed: int = 0, dtype=np.float32, std: float = 0.02):
        """Fresh weights: N(0, std) matrices and embeddings, RMSNorm weights 1."""
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in expected_shapes(config).items():
            value = np.ones(shape) if len(shape) == 1 else rng.normal(0.0, std, size=shape)
            params[name] = value.astype(dtype)
        return cls(config, params)

    def with_attention_core(self, core) -> "LlamaModel":
        """A copy whose attention runs on ``core``: the parameter arrays, tokenizer and
        metadata are shared, not copied (the parameter dict is new), and no training
        cache is carried over."""
        other = LlamaModel.__new__(LlamaModel)
        other.__dict__.update(self.__dict__)
        other.params = dict(self.params)
        other._cache = None
        other.attention_core = core
        return other

    def astype(self, dtype) -> "LlamaModel":
        """A copy with every parameter cast to dtype (tokenizer shared, core copied)."""
        other = LlamaModel(LlamaConfig.from_dict(self.config.to_dict()),
                           {n: v.astype(dtype) for n, v in self.params.items()},
                           self.tokenizer, self.chat_template)
        other.attention_core = _copy.deepcopy(self.attention_core)
        other.had = _copy.deepcopy(self.had)
        return other

    @property
    def dtype(self):
        return self.params[EMBED].dtype

    @property
    def lm_head(self) -> np.ndarray:
        """(V, H): the embedding when tied."""
        return self.params[EMBED if self.config.tie_word_embeddings else LM_HEAD]

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    # --- input checks --------------------------------------------------------------------

    def _check_ids(self, input_ids, what="input_ids", offset=0):
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise HadrefError(f"{what}: expected a (batch, tokens) integer array, got shape "
                              f"{ids.shape} dtype {ids.dtype}")
        cfg = self.config
        if ids.shape[1] == 0:
            raise HadrefError(f"{what}: empty sequence (at least one token is needed)")
        if offset + ids.shape[1] > cfg.max_position_embeddings:
            raise HadrefError(f"{what}: sequence length {offset + ids.shape[1]} exceeds the "
                              f"context length (max_position_embeddings = "
                              f"{cfg.max_position_embeddings})")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise HadrefError(f"{what}: token ids must be in [0, {cfg.vocab_size}), got "
                              f"{ids.min()}..{ids.max()}")
        return np.ascontiguousarray(ids, dtype=np.int64)

    # --- forward / backward --------------------------------------------------------------

    def _layer(self, x, layer, tables, key_mask, train, kv_cache=None):
        cfg, params = self.config, self.params
        p = f"layers.{layer}."
        normed, n1 = rmsnorm_forward(x, params[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        attn, a_cache = causal_attention_forward(
            normed, params, layer, cfg.num_attention_heads, cfg.num_key_value_heads, tables,
            key_mask, self.attention_core, train, kv_cache)
        x = x + attn
        normed, n2 = rmsnorm_forward(x, params[p + "post_attention_layernorm.weight"],
                                     cfg.rms_norm_eps)
        mlp, m_cache = mlp_forward(normed, params, layer)
        x = x + mlp  # not in place: the norm's cache holds the old x
        return x, (LayerCache(n1, a_cache, n2, m_cache) if train else None)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False,
                train=False, compute_logits=True) -> DecoderOutput:
        """Run the decoder over whole sequences (positions 0..T-1, padding on the right).

        input_ids (B, T) int; attention_mask (B, T) (nonzero = valid; None = all valid).
        ``train=True`` keeps the cache that :meth:`backward` uses (short sequences: it
        holds every layer's (B, h, T, T) probabilities). ``compute_logits=False`` skips
        the (B, T, V) logits (see :meth:`logits_of` and :meth:`token_nll` for long inputs).
        """
        ids = self._check_ids(input_ids)
        nb, nt = ids.shape
        key_mask = None
        if attention_mask is not None:
            mask = np.asarray(attention_mask)
            if mask.shape != ids.shape:
                raise HadrefError(f"attention_mask: expected shape {ids.shape}, got {mask.shape}")
            if not (mask != 0).all():
                key_mask = np.ascontiguousarray(mask != 0)
        cfg = self.config
        tables = rope_tables(np.arange(nt), cfg.head_dim, cfg.rope_theta, self.dtype)
        x = self.params[EMBED][ids]
        hidden = [x] if output_hidden_states else None
        caches = []
        for layer in range(cfg.num_hidden_layers):
            x, cache = self._layer(x, layer, tables, key_mask, train)
            caches.append(cache)
            if output_hidden_states and layer < cfg.num_hidden_layers - 1:
                hidden.append(x)
        normed, norm_cache = rmsnorm_forward(x, self.params[NORM], cfg.rms_norm_eps)
        if output_hidden_states:
            hidden.append(normed)
        logits = self.logits_of(normed) if compute_logits or train else None
        self._cache = ModelCache(ids, caches, norm_cache, normed) if train else None
        return DecoderOutput(logits, normed, hidden)

    def logits_of(self, normed):
        """normed (..., H) final hidden states -> logits (..., V) in the model's dtype."""
        head = self.lm_head
        return np.matmul(normed.reshape(-1, normed.shape[-1]), head.T).reshape(
            *normed.shape[:-1], head.shape[0])

    def backward(self, dlogits=None, dhidden=None) -> dict:
        """Gradients of the last ``forward(train=True)``; the cache is consumed.

        dlogits (B, T, V): gradient w.r.t. the logits; dhidden (B, T, H): w.r.t. the
        last (normed) hidden state. Returns {name: gradient} with the keys of ``params``.
        """
        if self._cache is None:
            raise HadrefError("backward: no cache; call forward(..., train=True) first "
                              "(each backward consumes the cache of one forward)")
        if dlogits is None and dhidden is None:
            raise HadrefError("backward: give dlogits or dhidden")
        ids, caches, norm_cache, normed = self._cache
        self._cache = None
        cfg, dtype = self.config, self.dtype
        grads = {name: None for name in self.params}
        dnormed = np.zeros(normed.shape, dtype)
        head_grad = np.zeros(self.lm_head.shape, dtype)
        if dlogits is not None:
            dlogits = np.asarray(dlogits, dtype)
            rows = dlogits.reshape(-1, dlogits.shape[-1])
            dnormed += np.matmul(rows, self.lm_head).reshape(normed.shape)
            head_grad += np.matmul(rows.T, normed.reshape(-1, normed.shape[-1]))
        if dhidden is not None:
            dnormed += dhidden
        dx, grads[NORM] = rmsnorm_backward(dnormed, norm_cache)
        for layer in reversed(range(cfg.num_hidden_layers)):
            c = caches[layer]
            p = f"layers.{layer}."
            dmlp_in, g = mlp_backward(dx, c.mlp)
            grads.update(g)
            dres, grads[p + "post_attention_layernorm.weight"] = rmsnorm_backward(dmlp_in, c.mlp_norm)
            dx = dx + dres
            dattn_in, g = causal_attention_backward(dx, c.attn)
            grads.update(g)
            dres, grads[p + "input_layernorm.weight"] = rmsnorm_backward(dattn_in, c.attn_norm)
            dx = dx + dres
        dembed = np.zeros(self.params[EMBED].shape, dtype)
        elementwise.scatter_add_rows(ids.reshape(-1), np.ascontiguousarray(
            dx.reshape(-1, dx.shape[-1]), dtype), dembed)
        if cfg.tie_word_embeddings:
            dembed += head_grad
        else:
            grads[LM_HEAD] = head_grad
        grads[EMBED] = dembed
        return {name: np.asarray(grads[name], dtype) for name in self.params}

    # --- long inputs ---------------------------------------------------------------------

    def token_nll(self, input_ids, chunk: int = 512) -> np.ndarray:
        """input_ids (T,) or (1, T) int -> (T-1,) float64: -log p(token t+1 | tokens <= t).

        The logits are formed ``chunk`` positions at a time (never (T, V) at once)."""
        ids = np.asarray(input_ids)
        ids = ids[None] if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 2:
            raise HadrefError(f"input_ids: expected one sequence of at least 2 tokens, got "
                              f"shape {np.asarray(input_ids).shape}")
        out = self.forward(ids, compute_logits=False)
        normed, targets = out.last_hidden_state[0, :-1], ids[0, 1:]
        nll = np.empty(len(targets))
        for s in range(0, len(targets), chunk):
            logits = self.logits_of(normed[s:s + chunk]).astype(np.float64)
            top = logits.max(axis=-1, keepdims=True)
            lse = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
            nll[s:s + chunk] = lse - logits[np.arange(len(logits)), targets[s:s + chunk]]
        return nll

    # --- incremental decoding ------------------------------------------------------------

    def new_kv_cache(self, capacity: int, batch: int = 1):
        """The attention core's key/value cache for ``capacity`` positions."""
        cfg = self.config
        return self.attention_core.new_kv_cache(cfg.num_hidden_layers, batch,
                                                cfg.num_key_value_heads, capacity,
                                                cfg.head_dim, self.dtype)

    def step(self, input_ids, kv_cache, last_only: bool = True):
        """Run t new positions after those in kv_cache (filled in place).

        input_ids (B, t) int -> logits (B, V) of the last position (or (B, t, V) when not
        last_only), in the model's dtype.
        """
        start = kv_cache.lengths[0]
        ids = self._check_ids(input_ids, offset=start)
        cfg = self.config
        tables = rope_tables(np.arange(start, start + ids.shape[1]), cfg.head_dim,
                             cfg.rope_theta, self.dtype)
        x = self.params[EMBED][ids]
        for layer in range(cfg.num_hidden_layers):
            x, _ = self._layer(x, layer, tables, None, False, kv_cache)
        if last_only:
            x = x[:, -1]
        normed, _ = rmsnorm_forward(x, self.params[NORM], cfg.rms_norm_eps)
        return self.logits_of(normed)

    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0, stop_at_eos: bool = True,
                 stats: dict | None = None):
        """Continue prompt_ids (t,) int with up to max_new_tokens tokens, using a KV cache.

        temperature 0: greedy (argmax); otherwise sample from softmax(logits / temperature),
        restricted to the top_k most likely tokens when given, drawn with
        ``np.random.default_rng(seed)``. Stops after eos_token_id when stop_at_eos.
        Returns the new tokens, (n,) int64. ``stats``, a dict, receives prefill_s and
        decode_s (seconds) and prompt_tokens, new_tokens.
        """
        prompt = np.asarray(prompt_ids)
        if prompt.ndim != 1 or prompt.size == 0:
            raise HadrefError(f"prompt: expected a non-empty 1-D array of token ids, got shape "
                              f"{prompt.shape}")
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise HadrefError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        if not temperature >= 0:
            raise HadrefError(f"temperature: expected a number >= 0, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise HadrefError(f"top_k: expected a positive integer or None, got {top_k!r}")
        total = prompt.size + int(max_new_tokens)
        if total > self.config.max_position_embeddings:
            raise HadrefError(f"prompt: {prompt.size} tokens + {max_new_tokens} new ones exceed "
                              f"the context length ({self.config.max_position_embeddings})")
        rng = np.random.default_rng(seed)
        if max_new_tokens == 0:
            return np.zeros(0, np.int64)
        cache = self.new_kv_cache(total)
        out = []
        began = time.perf_counter()
        logits = self.step(prompt[None], cache)[0]
        prefilled = time.perf_counter()
        while True:
            token = _pick(logits, temperature, top_k, rng)
            out.append(token)
            if len(out) == max_new_tokens or (stop_at_eos and token == self.config.eos_token_id):
                break
            logits = self.step(np.array([[token]]), cache)[0]
        if stats is not None:
            stats.update(prefill_s=prefilled - began, decode_s=time.perf_counter() - prefilled,
                         prompt_tokens=int(prompt.size), new_tokens=len(out))
        return np.array(out, np.int64)

    def __repr__(self):
        cfg = self.config
        return (f"LlamaModel(L={cfg.num_hidden_layers}, H={cfg.hidden_size}, "
                f"heads={cfg.num_attention_heads}/{cfg.num_key_value_heads}, "
                f"{self.num_parameters():,} params, {self.dtype}, "
                f"core={type(self.attention_core).__name__})")


def _pick(logits, temperature, top_k, rng) -> int:
    """One token from logits (V,)."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        cut = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(p.size, p=p))
