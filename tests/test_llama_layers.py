"""The decoder's layers and the whole LlamaModel backward against central finite
differences in float64; blocked inference and cached decoding against the plain forward."""

import numpy as np
import pytest
from gradcheck import assert_gradient, pick_entries
from hypothesis import given
from hypothesis import strategies as st

from hadref.engine.config import LlamaConfig
from hadref.engine.gguf import permute_rows, unpermute_rows
from hadref.engine.layers import causal_attention as ca
from hadref.engine.layers import rmsnorm, rope, swiglu
from hadref.engine.llama import LlamaModel

seeds = st.integers(0, 2**31 - 1)


def assert_grad(analytic, loss, x, name=""):
    entries = pick_entries(x.size, 20, np.random.default_rng(0))
    assert_gradient(analytic, loss, x, entries, rtol=1e-5, atol=1e-7, err_msg=name)


def rand(rng, *shape):
    return rng.standard_normal(shape)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(2, 9), seeds, st.floats(1e-8, 1e-2))
def test_rmsnorm(nb, nt, h, seed, eps):
    rng = np.random.default_rng(seed)
    x, w, r = rand(rng, nb, nt, h) * 2, rand(rng, h), rand(rng, nb, nt, h)
    y, cache = rmsnorm.rmsnorm_forward(x, w, eps)
    np.testing.assert_allclose(y, x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w,
                               rtol=1e-12)
    dx, dw = rmsnorm.rmsnorm_backward(r, cache)

    def loss():
        return float((rmsnorm.rmsnorm_forward(x, w, eps)[0] * r).sum())

    assert_grad(dx, loss, x, "x")
    assert_grad(dw, loss, w, "weight")


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.sampled_from([2, 4, 8]),
       seeds)
def test_rope(nb, nh, nt, d, seed):
    rng = np.random.default_rng(seed)
    x, r = rand(rng, nb, nh, nt, d), rand(rng, nb, nh, nt, d)
    tables = rope.rope_tables(np.arange(3, 3 + nt), d, 100.0, np.float64)
    y = rope.rope_forward(x, tables)
    # a rotation: norms kept per (position, pair of dimensions i, i + d/2)
    half = d // 2
    np.testing.assert_allclose(y[..., :half] ** 2 + y[..., half:] ** 2,
                               x[..., :half] ** 2 + x[..., half:] ** 2, rtol=1e-10)
    assert_grad(rope.rope_backward(r, tables),
                lambda: float((rope.rope_forward(x, tables) * r).sum()), x)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = rand(rng, 1, 1, 1, 8), rand(rng, 1, 1, 1, 8)

    def score(pq, pk):
        tq = rope.rope_tables(np.array([pq]), 8, 1e4, np.float64)
        tk = rope.rope_tables(np.array([pk]), 8, 1e4, np.float64)
        return float((rope.rope_forward(q, tq) * rope.rope_forward(k, tk)).sum())

    # angles are float32 (as in the reference library): equal to ~1e-7
    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-6)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)


@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 7), seeds)
def test_swiglu(nb, nt, inner, seed):
    rng = np.random.default_rng(seed)
    g, u, r = rand(rng, nb, nt, inner) * 3, rand(rng, nb, nt, inner), rand(rng, nb, nt, inner)
    y, cache = swiglu.swiglu_forward(g, u)
    np.testing.assert_allclose(y, g / (1 + np.exp(-g)) * u, rtol=1e-12)
    dg, du = swiglu.swiglu_backward(r, cache)

    def loss():
        return float((swiglu.swiglu_forward(g, u)[0] * r).sum())

    assert_grad(dg, loss, g, "gate")
    assert_grad(du, loss, u, "up")


def test_mlp_block():
    rng = np.random.default_rng(1)
    h, inner = 5, 7
    params = {"layers.0.mlp.gate_proj.weight": rand(rng, inner, h),
              "layers.0.mlp.up_proj.weight": rand(rng, inner, h),
              "layers.0.mlp.down_proj.weight": rand(rng, h, inner)}
    x, r = rand(rng, 2, 3, h), rand(rng, 2, 3, h)
    dx, grads = swiglu.mlp_backward(r, swiglu.mlp_forward(x, params, 0)[1])

    def loss():
        return float((swiglu.mlp_forward(x, params, 0)[0] * r).sum())

    assert_grad(dx, loss, x, "x")
    for name, value in params.items():
        assert_grad(grads[name], loss, value, name)


def _reference_attention(q, k, v, key_mask):
    """Plain causal GQA attention with K/V repeated per query head (float64)."""
    nb, hq, nt, d = q.shape
    g = hq // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ k.swapaxes(-1, -2) / np.sqrt(d)
    allowed = np.tril(np.ones((nt, nt), bool))[None, None] & key_mask[:, None, None, :]
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ v


@pytest.mark.parametrize("hq,hkv", [(1, 1), (4, 2), (6, 2), (3, 3)])
def test_causal_core_forward_and_backward(hq, hkv):
    rng = np.random.default_rng(hq * 10 + hkv)
    nb, nt, d = 2, 5, 4
    q, k, v = rand(rng, nb, hq, nt, d), rand(rng, nb, hkv, nt, d), rand(rng, nb, hkv, nt, d)
    key_mask = np.ones((nb, nt), bool)
    key_mask[1, 3:] = False  # right padding
    core = ca.CausalFloatAttentionCore()
    ctx, cache = core.forward(q, k, v, key_mask, 0, train=True)
    ref = _reference_attention(q, k, v, key_mask)
    np.testing.assert_allclose(ctx[0], ref[0], rtol=1e-12)
    np.testing.assert_allclose(ctx[1, :, :3], ref[1, :, :3], rtol=1e-12)  # valid queries
    # the inference path (query blocks of 2 rows) gives the same context
    core.score_budget = nb * hq * nt * 2
    assert core.query_block_rows(nb, hq, nt) == 2
    np.testing.assert_allclose(core.forward(q, k, v, key_mask, 0)[0], ctx, rtol=1e-12)
    r = rand(rng, *ctx.shape)
    dq, dk, dv = core.backward(cache, r)
    assert dk.shape == k.shape and dv.shape == v.shape

    def loss():
        return float((core.forward(q, k, v, key_mask, 0, train=True)[0] * r).sum())

    for name, grad, arr in (("q", dq, q), ("k", dk, k), ("v", dv, v)):
        assert_grad(grad, loss, arr, name)


def test_causal_attention_layer():
    rng = np.random.default_rng(3)
    h, hq, hkv, d, nt = 8, 4, 2, 4, 5
    params = {"layers.1.self_attn.q_proj.weight": rand(rng, hq * d, h) * 0.5,
              "layers.1.self_attn.k_proj.weight": rand(rng, hkv * d, h) * 0.5,
              "layers.1.self_attn.v_proj.weight": rand(rng, hkv * d, h),
              "layers.1.self_attn.o_proj.weight": rand(rng, h, hq * d)}
    x, r = rand(rng, 2, nt, h), rand(rng, 2, nt, h)
    tables = rope.rope_tables(np.arange(nt), d, 50.0, np.float64)
    core = ca.CausalFloatAttentionCore()

    def run(train):
        return ca.causal_attention_forward(x, params, 1, hq, hkv, tables, None, core, train)

    out, cache = run(True)
    np.testing.assert_allclose(run(False)[0], out, rtol=1e-12)
    dx, grads = ca.causal_attention_backward(r, cache)

    def loss():
        return float((run(True)[0] * r).sum())

    assert_grad(dx, loss, x, "x")
    for name, value in params.items():
        assert_grad(grads[name], loss, value, name)


def test_gguf_row_permutation_round_trips():
    w = np.arange(4 * 6 * 3, dtype=np.float64).reshape(4 * 6, 3)  # 4 heads of d = 6
    p = permute_rows(w, 4)
    assert not np.array_equal(p, w)
    np.testing.assert_array_equal(unpermute_rows(p, 4), w)
    # llama.cpp interleaves the two rotate-half halves of each head: rows 0, 3, 1, 4, 2, 5
    np.testing.assert_array_equal(p[:6, 0], w[[0, 3, 1, 4, 2, 5], 0])


def tiny_config(**kw):
    base = dict(vocab_size=23, hidden_size=12, intermediate_size=10, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=4, rms_norm_eps=1e-6,
                rope_theta=1000.0, max_position_embeddings=16, bos_token_id=1, eos_token_id=2)
    return LlamaConfig(**{**base, **kw})


def tiny_model(seed=0, dtype=np.float64, **kw):
    model = LlamaModel.random(tiny_config(**kw), seed=seed, dtype=dtype, std=0.5)
    rng = np.random.default_rng(seed + 1)
    for name, value in model.params.items():  # norms away from 1 so their gradients matter
        if value.ndim == 1:
            value[...] = 1 + 0.3 * rng.standard_normal(value.shape)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_whole_model_backward_matches_finite_differences(tied):
    model = tiny_model(tie_word_embeddings=tied)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 23, size=(2, 6))
    mask = np.ones((2, 6), int)
    mask[1, 4:] = 0
    weight = rand(rng, 2, 6, 23) * mask[..., None]  # a loss on valid positions' logits

    def loss():
        return float((model.forward(ids, mask).logits * weight).sum())

    model.forward(ids, mask, train=True)
    grads = model.backward(dlogits=weight)
    assert set(grads) == set(model.params)
    names = ["embed_tokens.weight", "layers.0.input_layernorm.weight",
             "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
             "layers.1.self_attn.v_proj.weight", "layers.1.self_attn.o_proj.weight",
             "layers.0.post_attention_layernorm.weight", "layers.1.mlp.gate_proj.weight",
             "layers.0.mlp.up_proj.weight", "layers.1.mlp.down_proj.weight", "norm.weight"]
    for name in names + ([] if tied else ["lm_head.weight"]):
        assert_grad(grads[name], loss, model.params[name], name)


def test_forward_ignores_what_follows_and_padding():
    model = tiny_model()
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 23, size=(1, 9))
    full = model.forward(ids).logits
    np.testing.assert_allclose(model.forward(ids[:, :5]).logits, full[:, :5], rtol=1e-12)
    padded = np.concatenate([ids[:, :5], np.zeros((1, 4), int)], axis=1)
    out = model.forward(padded, np.array([[1] * 5 + [0] * 4])).logits
    np.testing.assert_allclose(out[:, :5], full[:, :5], rtol=1e-12)


def test_cached_generation_equals_full_forwards():
    model = tiny_model(seed=3, dtype=np.float32)
    prompt = np.array([3, 7, 11, 5])
    new = model.generate(prompt, 8, stop_at_eos=False)
    seq = list(prompt)
    for _ in range(8):  # greedy from full forwards, no cache
        seq.append(int(np.argmax(model.forward(np.array([seq])).logits[0, -1])))
    assert new.tolist() == seq[len(prompt):]
    # the cached logits of the last step equal the full forward's
    cache = model.new_kv_cache(len(seq))
    model.step(np.array([seq[:6]]), cache)
    for t in range(6, len(seq)):
        step = model.step(np.array([[seq[t]]]), cache)[0]
    full = model.forward(np.array([seq])).logits[0, -1]
    np.testing.assert_allclose(step, full, rtol=1e-5, atol=1e-5)


def test_sampling_is_seeded_and_top_k_restricts():
    model = tiny_model(seed=4, dtype=np.float32)
    prompt = np.array([3, 4])
    a = model.generate(prompt, 6, temperature=1.0, seed=7, stop_at_eos=False)
    b = model.generate(prompt, 6, temperature=1.0, seed=7, stop_at_eos=False)
    assert a.tolist() == b.tolist()
    greedy = model.generate(prompt, 6, stop_at_eos=False)
    assert model.generate(prompt, 6, temperature=5.0, top_k=1, stop_at_eos=False).tolist() \
        == greedy.tolist()


def test_input_errors():
    from hadref.errors import HadrefError

    model = tiny_model(dtype=np.float32)
    with pytest.raises(HadrefError, match="context length"):
        model.forward(np.zeros((1, 17), int))
    with pytest.raises(HadrefError, match="context length"):
        model.generate(np.arange(10), 7)
    with pytest.raises(HadrefError, match="non-empty"):
        model.generate(np.zeros(0, int), 3)
    with pytest.raises(HadrefError, match=r"token ids must be in \[0, 23\)"):
        model.forward(np.array([[1, 23]]))
    with pytest.raises(HadrefError, match="no cache"):
        model.backward(np.zeros((1, 1, 23)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_causal_softmax_kernel_matches_numpy(dtype):
    from hadref.engine import elementwise

    rng = np.random.default_rng(9)
    nb, nh, per, nk, first = 2, 3, 5, 40, 30  # 2 query heads of 5 rows at positions 30..34
    scores = (rng.standard_normal((nb, nh, 2 * per, nk)) * 4).astype(dtype)
    mask = rng.random((nb, nk)) < 0.8
    mask[1] = False  # no valid key: all-zero rows
    mask[1, 33] = True  # ... except the rows at positions >= 33
    pos = first + np.arange(2 * per) % per
    allowed = (np.arange(nk)[None, :] <= pos[:, None])[None, None] & mask[:, None, None, :]
    z = np.where(allowed, scores.astype(np.float64), -np.inf)
    with np.errstate(invalid="ignore"):
        ref = np.exp(z - z.max(-1, keepdims=True))
        ref = np.nan_to_num(ref / ref.sum(-1, keepdims=True))
    out = scores.copy()
    elementwise.causal_softmax(out, mask, first, per)
    np.testing.assert_allclose(out, ref, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=1e-7)
    assert (out[~np.broadcast_to(allowed, out.shape)] == 0).all()
