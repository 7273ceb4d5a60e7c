"""One BERT encoder layer (post-LayerNorm, as Hugging Face BertLayer):

    a = LayerNorm(x + dropout(attention(x)))          (attention.output.LayerNorm)
    y = LayerNorm(a + dropout(feedforward(a)))        (output.LayerNorm)
"""

from typing import NamedTuple

from hadref.engine.layers.attention import self_attention_backward, self_attention_forward
from hadref.engine.layers.dropout import dropout_backward, dropout_forward
from hadref.engine.layers.feedforward import feedforward_backward, feedforward_forward
from hadref.engine.layers.layernorm import layernorm_backward, layernorm_forward


class EncoderLayerCache(NamedTuple):
    """What ``encoder_layer_forward`` saves for the backward, in forward order."""

    attention: object        # SelfAttentionCache
    attn_dropout: object     # DropoutCache or None
    attn_layernorm: object   # LayerNormCache
    feedforward: object      # FeedForwardCache
    ff_dropout: object       # DropoutCache or None
    out_layernorm: object    # LayerNormCache
    layer: int


def _ln_names(layer):
    return (f"encoder.layer.{layer}.attention.output.LayerNorm",
            f"encoder.layer.{layer}.output.LayerNorm")


def encoder_layer_forward(x, params, layer, config, key_mask, core, need_scores, rng, train):
    """x (B, T, H) -> (y (B, T, H), cache, aux from the attention core)."""
    ln_attn, ln_out = _ln_names(layer)
    attn, attn_cache, aux = self_attention_forward(
        x, params, layer, config.num_attention_heads, key_mask, core, need_scores,
        config.attention_probs_dropout_prob, rng, train)
    attn, drop_attn = dropout_forward(attn, config.hidden_dropout_prob, rng, train)
    attn += x
    a, ln_attn_cache = layernorm_forward(attn, params[ln_attn + ".weight"],
                                         params[ln_attn + ".bias"], config.layer_norm_eps)
    ff, ff_cache = feedforward_forward(a, params, layer)
    ff, drop_ff = dropout_forward(ff, config.hidden_dropout_prob, rng, train)
    ff += a
    y, ln_out_cache = layernorm_forward(ff, params[ln_out + ".weight"],
                                        params[ln_out + ".bias"], config.layer_norm_eps)
    return y, EncoderLayerCache(attn_cache, drop_attn, ln_attn_cache, ff_cache, drop_ff,
                                ln_out_cache, layer), aux


def encoder_layer_backward(dy, cache, dscores=None, tokens=None):
    """dy (B, T, H), dscores (B, h, T, T) or None -> (dx (B, T, H), {name: gradient}).

    ``tokens``: a slice of token positions outside which dy is zero (the last layer under
    a loss on the pooled [CLS] token: ``slice(0, 1)``), with dscores None. The
    feed-forward block, the attention output dense and the attention core then run on
    those rows only (LayerNorm and dropout rows of a zero gradient are exactly zero); the
    gradients are the same."""
    attn_cache, drop_attn, ln_attn_cache, ff_cache, drop_ff, ln_out_cache, layer = cache
    ln_attn, ln_out = _ln_names(layer)
    grads = {}
    dsum_ff, grads[ln_out + ".weight"], grads[ln_out + ".bias"] = layernorm_backward(
        dy, ln_out_cache)
    dff = dropout_backward(dsum_ff, drop_ff)
    if tokens is None:
        da, ff_grads = feedforward_backward(dff, ff_cache)
        da += dsum_ff
    else:
        da_rows, ff_grads = feedforward_backward(dff[:, tokens], ff_cache, tokens)
        da = dsum_ff  # zero outside the tokens
        da[:, tokens] += da_rows
    grads.update(ff_grads)
    dsum_attn, grads[ln_attn + ".weight"], grads[ln_attn + ".bias"] = layernorm_backward(
        da, ln_attn_cache)
    dx, attn_grads = self_attention_backward(dropout_backward(dsum_attn, drop_attn),
                                             attn_cache, dscores, tokens)
    dx += dsum_attn
    grads.update(attn_grads)
    return dx, grads
