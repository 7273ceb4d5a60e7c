"""Every engine layer against central finite differences in float64 (input and parameter
gradients), with hypothesis over shapes, masks and dropout seeds."""

import math

import numpy as np
import pytest
from gradcheck import assert_gradient, pick_entries
from hypothesis import given, settings
from hypothesis import strategies as st
from masks import dropout_mask

from hadref.engine import elementwise
from hadref.engine.bert import BertModel
from hadref.engine.config import BertConfig
from hadref.engine.layers import (
    attention,
    classifier,
    dropout,
    embeddings,
    encoder_layer,
    feedforward,
    gelu,
    layernorm,
    linear,
    losses,
    pooler,
)


def assert_grad(analytic, loss, x, name=""):
    """analytic against central differences at up to 20 random entries of x (fixed draw)."""
    entries = pick_entries(x.size, 20, np.random.default_rng(0))
    assert_gradient(analytic, loss, x, entries, rtol=1e-5, atol=1e-7, err_msg=name)


def rand(rng, *shape):
    return rng.standard_normal(shape)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 5))  # (B, T)
seeds = st.integers(0, 2**31 - 1)


@given(shapes, st.integers(1, 6), st.integers(1, 6), seeds)
def test_linear(bt, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, *bt, n_in), rand(rng, n_out, n_in), rand(rng, n_out)
    r = rand(rng, *bt, n_out)

    def loss():
        return float((linear.linear_forward(x, w, b)[0] * r).sum())

    y, cache = linear.linear_forward(x, w, b)
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-12)
    dx, dw, db = linear.linear_backward(r, cache)
    for name, grad, arr in (("x", dx, x), ("w", dw, w), ("b", db, b)):
        assert_grad(grad, loss, arr, name)


@given(shapes, st.integers(1, 9), seeds, st.floats(1e-12, 1e-3))
def test_layernorm(bt, h, seed, eps):
    rng = np.random.default_rng(seed)
    x, g, b = rand(rng, *bt, h) * 3 + 1, rand(rng, h), rand(rng, h)
    r = rand(rng, *bt, h)

    def loss():
        return float((layernorm.layernorm_forward(x, g, b, eps)[0] * r).sum())

    y, cache = layernorm.layernorm_forward(x, g, b, eps)
    mu = x.mean(-1, keepdims=True)
    ref = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)
    dx, dg, db = layernorm.layernorm_backward(r, cache)
    if h > 1:  # h == 1: the output is beta whatever x is; FD of a constant is noise-free 0
        assert_grad(dx, loss, x, "x")
    assert_grad(dg, loss, g, "gamma")
    assert_grad(db, loss, b, "beta")


@given(shapes, st.integers(1, 7), seeds)
def test_gelu(bt, h, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, *bt, h) * 3
    r = rand(rng, *bt, h)
    y, cache = gelu.gelu_forward(x)
    erf = np.vectorize(math.erf)
    np.testing.assert_allclose(y, 0.5 * x * (1 + erf(x / math.sqrt(2))), rtol=1e-14, atol=1e-15)
    assert_grad(gelu.gelu_backward(r, cache),
                lambda: float((gelu.gelu_forward(x)[0] * r).sum()), x)


@given(shapes, st.integers(1, 7), seeds, st.sampled_from([0.0, 0.1, 0.5, 0.9]))
def test_dropout(bt, h, seed, p):
    rng = np.random.default_rng(seed)
    x = rand(rng, *bt, h)
    r = rand(rng, *bt, h)
    y, cache = dropout.dropout_forward(x, p, np.random.default_rng(seed), True)
    y2, _ = dropout.dropout_forward(x, p, np.random.default_rng(seed), True)
    np.testing.assert_array_equal(y, y2)  # the seeded generator decides the mask
    if p > 0:
        _, _, threshold, scale, shape = cache
        assert threshold == round(p * 65536) and scale == 65536 / (65536 - threshold)
        keep = dropout_mask(cache)
        assert keep.shape == shape
        np.testing.assert_array_equal(y, np.where(keep, x * scale, 0.0))
        np.testing.assert_array_equal(dropout.dropout_backward(r, cache),
                                      np.where(keep, r * scale, 0.0))
    assert_grad(dropout.dropout_backward(r, cache),
                lambda: float((dropout.dropout_forward(
                    x, p, np.random.default_rng(seed), True)[0] * r).sum()), x)
    same, none = dropout.dropout_forward(x, p, rng, False)
    assert same is x and none is None


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_masks_look_random(p):
    """Rate, unbiasedness, independence between neighbours and between calls."""
    x = np.ones((400, 500), np.float32)
    rng = np.random.default_rng(1)
    y, cache = dropout.dropout_forward(x, p, rng, True)
    keep = dropout_mask(cache)
    sd = math.sqrt(p * (1 - p) / keep.size)
    assert abs(keep.mean() - (1 - p)) < 5 * sd
    assert y.dtype == np.float32 and abs(y.mean() - 1.0) < 5 * sd / (1 - p)
    k = keep.reshape(-1).astype(np.float64)
    for lag in (1, 2, 8, 500):
        assert abs(np.corrcoef(k[:-lag], k[lag:])[0, 1]) < 0.01
    other = dropout_mask(dropout.dropout_forward(x, p, rng, True)[1])
    assert abs(np.corrcoef(k, other.reshape(-1))[0, 1]) < 0.01


@given(shapes, st.integers(1, 3), st.integers(1, 4), seeds, st.booleans())
def test_embeddings(bt, h_half, vocab, seed, drop):
    rng = np.random.default_rng(seed)
    nb, nt = bt
    h = 2 * h_half
    params = {embeddings.WORD: rand(rng, vocab, h), embeddings.POSITION: rand(rng, nt + 2, h),
              embeddings.TOKEN_TYPE: rand(rng, 2, h), embeddings.LN_WEIGHT: rand(rng, h),
              embeddings.LN_BIAS: rand(rng, h)}
    ids = rng.integers(0, vocab, bt)
    types = rng.integers(0, 2, bt)
    r = rand(rng, nb, nt, h)
    p = 0.3 if drop else 0.0

    def run():
        return embeddings.embeddings_forward(ids, types, params, 1e-12, p,
                                             np.random.default_rng(seed), True)

    out, cache = run()
    summed = params[embeddings.WORD][ids] + params[embeddings.POSITION][:nt] \
        + params[embeddings.TOKEN_TYPE][types]
    ref, _ = layernorm.layernorm_forward(summed, params[embeddings.LN_WEIGHT],
                                         params[embeddings.LN_BIAS], 1e-12)
    if not drop:
        np.testing.assert_allclose(out, ref, rtol=1e-12)
    grads = embeddings.embeddings_backward(r, cache)
    for name, value in params.items():
        assert_grad(grads[name], lambda: float((run()[0] * r).sum()), value, name)


def _random_key_mask(rng, nb, nt, allow_empty):
    mask = rng.random((nb, nt)) < 0.7
    if not allow_empty:
        mask[:, 0] = True
    return mask


@given(shapes, st.integers(1, 3), st.integers(1, 4), seeds, st.booleans(), st.booleans())
def test_float_attention_core(bt, heads, d, seed, with_scores, with_dropout):
    rng = np.random.default_rng(seed)
    nb, nt = bt
    q, k, v = (rand(rng, nb, heads, nt, d) for _ in range(3))
    key_mask = _random_key_mask(rng, nb, nt, allow_empty=True)
    r_ctx = rand(rng, nb, heads, nt, d)
    r_s = rand(rng, nb, heads, nt, nt)
    core = attention.FloatAttentionCore()

    def run():
        drop = (0.4, np.random.default_rng(seed)) if with_dropout else None
        return core.forward(q, k, v, key_mask, 0, with_scores, dropout=drop)

    def loss():
        ctx, _, aux = run()
        return float((ctx * r_ctx).sum() + ((aux["scores"] * r_s).sum() if with_scores else 0))

    ctx, cache, aux = run()
    # reference: softmax over valid keys; rows with no valid key are zero
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(d)
    masked = np.where(key_mask[:, None, None, :], scores, -np.inf)
    with np.errstate(invalid="ignore"):
        e = np.exp(masked - masked.max(-1, keepdims=True))
        ref = np.nan_to_num(e / e.sum(-1, keepdims=True))
    np.testing.assert_allclose(aux["probs"], ref, rtol=1e-12, atol=1e-15)
    assert (aux["probs"][np.broadcast_to(~key_mask[:, None, None, :], ref.shape)] == 0).all()
    if with_scores:
        np.testing.assert_allclose(aux["scores"], scores, rtol=1e-12)
    else:
        assert "scores" not in aux
    if not with_dropout:
        np.testing.assert_allclose(ctx, ref @ v, rtol=1e-12, atol=1e-14)
    dq, dk, dv = core.backward(cache, r_ctx, r_s if with_scores else None)
    for name, grad, arr in (("q", dq, q), ("k", dk, k), ("v", dv, v)):
        assert_grad(grad, loss, arr, name)


@settings(max_examples=20)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 5), seeds,
       st.booleans(), st.sampled_from([np.float32, np.float64]))
def test_float_attention_core_scratch_reuse(nb, heads, nt, d, seed, with_scores, dtype):
    """The core's scratch buffer (scores, dropped probabilities, dprobs) never leaks into
    what a call returns or keeps: an older cache still gives the same gradients after
    other calls, returned arrays stay put, and the backward's recomputed dropped
    probabilities are the forward's bit for bit (dv = used^T dctx exactly)."""
    rng = np.random.default_rng(seed)

    def inputs():
        return tuple(rand(rng, nb, heads, nt, d).astype(dtype) for _ in range(3))

    key_mask = _random_key_mask(rng, nb, nt, allow_empty=True)
    dctx = rand(rng, nb, heads, nt, d).astype(dtype)
    core = attention.FloatAttentionCore()
    q, k, v = inputs()
    ctx, cache, aux = core.forward(q, k, v, key_mask, 0, with_scores,
                                   dropout=(0.3, np.random.default_rng(seed)))
    kept = {name: a.copy() for name, a in aux.items()}
    ref = attention.FloatAttentionCore()  # same call on a core of its own
    ref_ctx, ref_cache, _ = ref.forward(q, k, v, key_mask, 0, with_scores,
                                        dropout=(0.3, np.random.default_rng(seed)))
    np.testing.assert_array_equal(ctx, ref_ctx)
    # other calls in between: larger and smaller shapes, with and without dropout
    for drop in (None, (0.5, np.random.default_rng(1))):
        q2, k2, v2 = (np.concatenate([a, a], axis=2) for a in inputs())
        mask2 = np.concatenate([key_mask, key_mask], axis=1)
        _, cache2, _ = core.forward(q2, k2, v2, mask2, 1, not with_scores, dropout=drop)
        core.backward(cache2, np.ones_like(q2))
    for name, a in aux.items():
        np.testing.assert_array_equal(a, kept[name], err_msg=name)
    grads = core.backward(cache, dctx)
    ref_grads = ref.backward(ref_cache, dctx)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_array_equal(g, r)
    probs, mask = aux["probs"], cache[4]
    key1, key2, threshold, drop_scale = mask
    used = np.empty_like(probs)
    elementwise.dropout_apply(probs.reshape(-1), key1, key2, threshold, dtype(drop_scale),
                         used.reshape(-1))
    np.testing.assert_array_equal(grads[2], np.matmul(used.swapaxes(-1, -2), dctx))
    np.testing.assert_array_equal(ctx, np.matmul(used, v))


class _PlainCore(attention.FloatAttentionCore):
    """A core without the engine's `queries` shortcut (as any other core): a subclass that
    overrides backward declares that it drops the capability."""

    takes_strided_views = False

    def backward(self, cache, dctx, dscores=None):
        return super().backward(cache, dctx, dscores)


@settings(max_examples=20)
@given(shapes, st.sampled_from([(1, 2), (2, 2), (2, 3)]), seeds, st.booleans(), st.booleans(),
       st.sampled_from([np.float32, np.float64]))
def test_encoder_layer_backward_on_the_cls_row_equals_the_full_one(bt, heads_d, seed, drop,
                                                                   plain_core, dtype):
    """tokens=slice(0, 1) (dy zero but at token 0: the last layer under a pooled loss)
    gives the gradients of the full backward."""
    rng = np.random.default_rng(seed)
    nb, nt = bt
    heads, d = heads_d
    h = heads * d
    cfg = _layer_config(h, heads, drop, layers=1)
    params = {n: v.astype(dtype) for n, v in _layer_params(rng, h, 3).items()}
    x = rand(rng, nb, nt, h).astype(dtype)
    key_mask = _random_key_mask(rng, nb, nt, allow_empty=False)
    dy = np.zeros((nb, nt, h), dtype)
    dy[:, 0] = rand(rng, nb, h)
    core = _PlainCore() if plain_core else attention.FloatAttentionCore()

    def backward(tokens):
        _, cache, _ = encoder_layer.encoder_layer_forward(
            x, params, 0, cfg, key_mask, core, False, np.random.default_rng(seed), True)
        return encoder_layer.encoder_layer_backward(dy.copy(), cache, None, tokens)

    dx, grads = backward(None)
    dx_cls, grads_cls = backward(slice(0, 1))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(dx_cls, dx, rtol=tol, atol=tol)
    assert grads_cls.keys() == grads.keys()
    for name, grad in grads.items():
        np.testing.assert_allclose(grads_cls[name], grad, rtol=tol, atol=tol, err_msg=name)


def _layer_config(h, heads, drop, layers):
    """A tiny encoder-layer config (intermediate size 3), with dropout when ``drop``."""
    return BertConfig(vocab_size=5, hidden_size=h, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=3,
                      max_position_embeddings=8, hidden_dropout_prob=0.3 if drop else 0.0,
                      attention_probs_dropout_prob=0.2 if drop else 0.0)


def _layer_params(rng, h, inner, layer=0):
    model = BertModel.random(BertConfig(vocab_size=5, hidden_size=h, num_hidden_layers=layer + 1,
                                        num_attention_heads=1, intermediate_size=inner,
                                        max_position_embeddings=8), dtype=np.float64)
    # random (not init-like) values so every path carries signal
    return {n: rng.standard_normal(v.shape) * 0.5 for n, v in model.params.items()}


@given(shapes, st.sampled_from([(1, 2), (2, 2), (3, 1), (2, 3)]), seeds, st.booleans())
def test_self_attention(bt, heads_d, seed, with_scores):
    rng = np.random.default_rng(seed)
    nb, nt = bt
    heads, d = heads_d
    h = heads * d
    params = _layer_params(rng, h, 4)
    x = rand(rng, nb, nt, h)
    key_mask = _random_key_mask(rng, nb, nt, allow_empty=False)
    r = rand(rng, nb, nt, h)
    r_s = rand(rng, nb, heads, nt, nt)
    core = attention.FloatAttentionCore()

    def run():
        return attention.self_attention_forward(x, params, 0, heads, key_mask, core,
                                                with_scores, 0.0, None, False)

    def loss():
        out, _, aux = run()
        return float((out * r).sum() + ((aux["scores"] * r_s).sum() if with_scores else 0))

    _, cache, _ = run()
    dx, grads = attention.self_attention_backward(r, cache, r_s if with_scores else None)
    assert_grad(dx, loss, x, "x")
    for name, grad in grads.items():
        assert_grad(grad, loss, params[name], name)


@given(shapes, st.integers(1, 4), st.integers(1, 5), seeds)
def test_feedforward(bt, h, inner, seed):
    rng = np.random.default_rng(seed)
    params = _layer_params(rng, h, inner)
    x = rand(rng, *bt, h)
    r = rand(rng, *bt, h)

    def loss():
        return float((feedforward.feedforward_forward(x, params, 0)[0] * r).sum())

    _, cache = feedforward.feedforward_forward(x, params, 0)
    dx, grads = feedforward.feedforward_backward(r, cache)
    assert set(grads) == {n for n in params if "intermediate" in n or ".output.dense" in n
                          and "attention" not in n}
    assert_grad(dx, loss, x, "x")
    for name, grad in grads.items():
        assert_grad(grad, loss, params[name], name)


@settings(max_examples=20)
@given(shapes, st.sampled_from([(1, 2), (2, 2), (2, 3)]), seeds, st.booleans(), st.booleans())
def test_encoder_layer(bt, heads_d, seed, with_scores, drop):
    rng = np.random.default_rng(seed)
    nb, nt = bt
    heads, d = heads_d
    h = heads * d
    cfg = _layer_config(h, heads, drop, layers=2)
    params = _layer_params(rng, h, 3, layer=1)
    x = rand(rng, nb, nt, h)
    key_mask = _random_key_mask(rng, nb, nt, allow_empty=False)
    r = rand(rng, nb, nt, h)
    r_s = rand(rng, nb, heads, nt, nt)
    core = attention.FloatAttentionCore()

    def run():
        return encoder_layer.encoder_layer_forward(x, params, 1, cfg, key_mask, core, with_scores,
                                                   np.random.default_rng(seed), True)

    def loss():
        out, _, aux = run()
        return float((out * r).sum() + ((aux["scores"] * r_s).sum() if with_scores else 0))

    _, cache, _ = run()
    dx, grads = encoder_layer.encoder_layer_backward(r, cache, r_s if with_scores else None)
    assert all(name.startswith("encoder.layer.1.") for name in grads) and len(grads) == 16
    assert_grad(dx, loss, x, "x")
    for name, grad in grads.items():
        assert_grad(grad, loss, params[name], name)


@given(shapes, st.integers(1, 5), st.integers(1, 4), seeds, st.booleans())
def test_pooler_and_classifier(bt, h, n_labels, seed, drop):
    rng = np.random.default_rng(seed)
    params = {pooler.WEIGHT: rand(rng, h, h), pooler.BIAS: rand(rng, h),
              classifier.WEIGHT: rand(rng, n_labels, h), classifier.BIAS: rand(rng, n_labels)}
    hidden = rand(rng, *bt, h)
    r = rand(rng, bt[0], n_labels)
    p = 0.5 if drop else 0.0

    def run():
        pooled, pc = pooler.pooler_forward(hidden, params)
        logits, cc = classifier.classifier_forward(pooled, params, p, np.random.default_rng(seed),
                                                   True)
        return logits, pc, cc

    def loss():
        return float((run()[0] * r).sum())

    _, pc, cc = run()
    dpooled, grads = classifier.classifier_backward(r, cc)
    dhidden, pgrads = pooler.pooler_backward(dpooled, pc)
    grads.update(pgrads)
    assert (dhidden[:, 1:] == 0).all()
    assert_grad(dhidden, loss, hidden, "hidden")
    for name, grad in grads.items():
        assert_grad(grad, loss, params[name], name)


@given(st.integers(1, 5), st.integers(1, 5), seeds)
def test_losses(nb, n_classes, seed):
    rng = np.random.default_rng(seed)
    logits = rand(rng, nb, n_classes) * 3
    labels = rng.integers(0, n_classes, nb)
    loss, dlogits = losses.softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(nb), labels]).mean(), rel=1e-10)
    assert_grad(dlogits, lambda: losses.softmax_cross_entropy(logits, labels)[0], logits)
    preds, targets = rand(rng, nb, 1), rand(rng, nb)
    value, dpred = losses.mse(preds, targets)
    assert value == pytest.approx(((preds[:, 0] - targets) ** 2).mean(), rel=1e-12)
    assert_grad(dpred, lambda: losses.mse(preds, targets)[0], preds)


def test_cross_entropy_rejects_bad_labels():
    from hadref.errors import HadrefError

    with pytest.raises(HadrefError, match="labels"):
        losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(HadrefError, match="labels"):
        losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))


def test_cross_entropy_is_stable_for_huge_logits():
    loss, d = losses.softmax_cross_entropy(np.array([[1e4, 0.0], [0.0, 1e4]], np.float32),
                                           np.array([0, 0]))
    assert np.isfinite(loss) and np.isfinite(d).all() and loss == pytest.approx(5e3)
