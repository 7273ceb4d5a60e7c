"""BERT embeddings: word + position + token type, then LayerNorm and dropout.

Parameters (Hugging Face names): ``embeddings.word_embeddings.weight`` (V, H),
``embeddings.position_embeddings.weight`` (P, H), ``embeddings.token_type_embeddings.weight``
(types, H), ``embeddings.LayerNorm.weight`` / ``.bias`` (H,). Positions are 0..T-1.
"""

from typing import NamedTuple

import numpy as np

from hadref.engine import elementwise
from hadref.engine.layers.dropout import dropout_backward, dropout_forward
from hadref.engine.layers.layernorm import layernorm_backward, layernorm_forward

WORD = "embeddings.word_embeddings.weight"
POSITION = "embeddings.position_embeddings.weight"
TOKEN_TYPE = "embeddings.token_type_embeddings.weight"
LN_WEIGHT = "embeddings.LayerNorm.weight"
LN_BIAS = "embeddings.LayerNorm.bias"


class EmbeddingsCache(NamedTuple):
    """What ``embeddings_forward`` saves for the backward."""

    input_ids: np.ndarray        # (B, T) int64
    token_type_ids: np.ndarray   # (B, T) int64
    layernorm: object            # LayerNormCache
    dropout: object              # DropoutCache or None
    params: dict                 # the tables, for their shapes and dtypes


def embeddings_forward(input_ids, token_type_ids, params, eps, dropout_p, rng, train):
    """input_ids, token_type_ids (B, T) int64 (already range-checked) -> x (B, T, H)."""
    word = params[WORD]
    summed = np.empty((*input_ids.shape, word.shape[1]), dtype=word.dtype)
    elementwise.embedding_sum(input_ids, token_type_ids, word, params[POSITION],
                         params[TOKEN_TYPE], summed)
    normed, ln_cache = layernorm_forward(summed, params[LN_WEIGHT], params[LN_BIAS], eps)
    out, drop_cache = dropout_forward(normed, dropout_p, rng, train)
    return out, EmbeddingsCache(input_ids, token_type_ids, ln_cache, drop_cache, params)


def embeddings_backward(dout, cache):
    """dout (B, T, H) -> {name: gradient} for the five embedding parameters."""
    input_ids, token_type_ids, ln_cache, drop_cache, params = cache
    dnormed = dropout_backward(dout, drop_cache)
    dsummed, dgamma, dbeta = layernorm_backward(dnormed, ln_cache)
    nb, nt, h = dsummed.shape
    rows = np.ascontiguousarray(dsummed.reshape(nb * nt, h))
    # np.zeros (calloc) rather than zeros_like (which writes every page of a 47 MB table)
    dword = np.zeros(params[WORD].shape, params[WORD].dtype)
    elementwise.scatter_add_rows(input_ids.reshape(-1), rows, dword)
    dposition = np.zeros_like(params[POSITION])
    dposition[:nt] = dsummed.sum(axis=0)
    dtype_table = np.zeros_like(params[TOKEN_TYPE])
    elementwise.scatter_add_rows(token_type_ids.reshape(-1), rows, dtype_table)
    return {WORD: dword, POSITION: dposition, TOKEN_TYPE: dtype_table,
            LN_WEIGHT: dgamma, LN_BIAS: dbeta}
