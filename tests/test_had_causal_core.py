"""HADCausalCore (HAD in the Llama decoder): causal top-N with grouped-query heads against a
NumPy reference, gradients by finite differences, the layer-by-layer attention loss against
an all-at-once reference, the packed path, the recording core and the binarized teacher."""

import math

import numpy as np
import pytest
from gradcheck import assert_gradient, pick_entries

from hadref.engine.config import LlamaConfig
from hadref.engine.layers.causal_attention import CausalFloatAttentionCore
from hadref.engine.llama import LlamaModel
from hadref.errors import HadrefError
from hadref.had.binarize import sign_pm1
from hadref.had.causal_core import HADCausalCore, RecordingCausalCore, binarized_teacher

B, HQ, HKV, T, D = 2, 4, 2, 7, 5


def _inputs(dtype=np.float64, seed=0, t=T, d=D):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, HQ, t, d)).astype(dtype)
    k, v = (rng.standard_normal((B, HKV, t, d)).astype(dtype) for _ in range(2))
    mask = np.ones((B, t), bool)
    mask[1, t - 2:] = False
    mask[1, 1] = False
    return q, k, v, mask


def _transformed(x, sigma, transform, c):
    if transform == "tanh1":
        return c * sigma * np.tanh(x / (c * sigma))
    if transform == "tanh2":
        return sigma * np.tanh(x / (c * sigma))
    return sigma * sign_pm1(x)


def _row_n(top_n, ratio, seen):
    """N of a row seeing ``seen`` valid keys: min(top_n, seen), or with a ratio
    min(seen, max(1, round(ratio * seen))) (Python's round: half to even)."""
    if ratio is None:
        return min(top_n, seen)
    return 0 if seen == 0 else min(seen, max(1, round(ratio * seen)))


def _ref_topn(scores, valid, top_n, ratio=None):
    """Top-N mask per row by a full stable sort: score descending, index ascending; each
    row keeps _row_n of its valid keys."""
    keep = np.zeros(scores.shape, bool)
    flat_s = scores.reshape(-1, scores.shape[-1])
    flat_v = np.broadcast_to(valid, scores.shape).reshape(flat_s.shape)
    out = keep.reshape(flat_s.shape)
    for r in range(flat_s.shape[0]):
        cand = np.flatnonzero(flat_v[r])
        order = cand[np.lexsort((cand, -flat_s[r, cand]))]
        out[r, order[:_row_n(top_n, ratio, cand.size)]] = True
    return keep


def reference(q, k, v, mask, sq, sk, transform, c, top_n, ratio=None):
    """Full (T, T) maps with K/V repeated per query head -> (ctx, scores, valid, probs);
    top_n None with a ratio: N per row."""
    g = q.shape[1] // k.shape[1]
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    d, t = q.shape[-1], q.shape[2]
    if transform in ("ste", "hard"):  # the exact integer dot product of the signs
        scores = sign_pm1(q) @ np.swapaxes(sign_pm1(kr), -1, -2) * (sq * sk / math.sqrt(d))
    else:
        qt, kt = _transformed(q, sq, transform, c), _transformed(kr, sk, transform, c)
        scores = qt @ np.swapaxes(kt, -1, -2) / math.sqrt(d)
    valid = mask[:, None, None, :] & (np.arange(t)[None, :] <= np.arange(t)[:, None])
    keep = _ref_topn(scores, valid, top_n, ratio)
    z = np.where(keep, scores, -np.inf)
    top = z.max(-1, keepdims=True)
    top[~np.isfinite(top)] = 0
    p = np.exp(z - top)
    p /= np.maximum(p.sum(-1, keepdims=True), 1e-300)
    return p @ vr, scores, np.broadcast_to(valid, scores.shape), p


# (top_n, ratio): fixed N, or N per row (0.45 over rows seeing 1..7 keys: 1, 1, 1, 2, 2, 3, 3;
# 0.5 rounds x.5 to even: 1, 1, 2, 2, 2, 3, 4)
_N_RULES = [(1, None), (3, None), (100, None), (None, 0.45), (None, 0.5), (None, 1.0)]


@pytest.mark.parametrize("transform", ["tanh1", "tanh2", "ste", "hard"])
@pytest.mark.parametrize("top_n,ratio", _N_RULES)
def test_forward_equals_reference_with_repeated_kv(transform, top_n, ratio):
    q, k, v, mask = _inputs(seed=1)
    k[:, :, 4] = k[:, :, 2]  # ties between keys
    core = HADCausalCore([0.9, 1.3], [1.1, 0.8], top_n=top_n, top_n_ratio=ratio or 0.117,
                         transform=transform, c=1.7)
    core.max_block_rows = 3  # several query blocks
    ctx, cache = core.forward(q, k, v, mask, 1)
    assert cache is None
    ref = reference(q, k, v, mask, 1.3, 0.8, transform, 1.7, top_n, ratio)[0]
    np.testing.assert_allclose(ctx, ref, rtol=1e-12, atol=1e-12)
    if transform == "hard":  # the packed kernels: the same rows, the same N per row
        core.use_kernels = True
        np.testing.assert_allclose(core.forward(q, k, v, mask, 1)[0], ref, rtol=1e-12,
                                   atol=1e-12)


def test_top_n_for_and_settings():
    core = HADCausalCore([1.0], [1.0])
    assert core.top_n_for(256) == 30 and core.top_n_for(1) == 1 and core.top_n_for(1024) == 120
    assert HADCausalCore([1.0], [1.0], top_n=7).top_n_for(1000) == 7
    half = HADCausalCore([1.0], [1.0], top_n_ratio=0.5)  # x.5 rounds to even, as round()
    assert [half.top_n_for(t) for t in (1, 2, 3, 5, 7, 9)] == [1, 1, 2, 2, 4, 4]
    with pytest.raises(HadrefError, match="transform"):
        core.transform = "soft"
    with pytest.raises(HadrefError, match="top_n_ratio"):
        HADCausalCore([1.0], [1.0], top_n_ratio=0.0)
    with pytest.raises(HadrefError, match="sigma_k"):
        HADCausalCore([1.0, 2.0], [1.0])
    q, k, v, mask = _inputs()
    with pytest.raises(HadrefError, match="multiple"):
        core.forward(q[:, :3], k, v, mask, 0)
    with pytest.raises(HadrefError, match="inference only"):
        HADCausalCore([1.0], [1.0], transform="hard").forward(q, k, v, mask, 0, train=True)


def _weights(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("transform,c,top_n", [("tanh1", 5.0, 3), ("tanh1", 1.2, 3),
                                               ("tanh2", 1.0, 3), ("tanh2", 0.3, 3),
                                               ("tanh1", 1.2, None), ("tanh2", 0.3, None)])
def test_tanh_gradients_match_finite_differences(transform, c, top_n):
    # top_n None: N per row, top_n_ratio 0.45
    q, k, v, mask = _inputs(seed=2)
    core = HADCausalCore([0.9, 1.3], [1.1, 0.8], top_n=top_n, top_n_ratio=0.45,
                         transform=transform, c=c)
    core.max_block_rows = 2
    w = _weights(q.shape, 3)

    def loss():
        return float((core.forward(q, k, v, mask, 1, train=True)[0] * w).sum())

    ctx, cache = core.forward(q, k, v, mask, 1, train=True)
    dq, dk, dv = core.backward(cache, w)
    for name, arr, grad in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
        assert_gradient(grad, loss, arr, rtol=2e-5, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("top_n,ratio", [(2, None), (None, 0.45)])
def test_ste_gradient_is_its_definition_and_v_by_finite_differences(top_n, ratio):
    q, k, v, mask = _inputs(seed=4)
    sq, sk, t = 0.8, 1.1, 1.0
    core = HADCausalCore([sq], [sk], top_n=top_n, top_n_ratio=ratio or 0.117, transform="ste",
                         ste_t=t)
    core.max_block_rows = 3
    w = _weights(q.shape, 5)
    ctx, cache = core.forward(q, k, v, mask, 0, train=True)
    dq, dk, dv = core.backward(cache, w)
    _, _, _, p = reference(q, k, v, mask, sq, sk, "ste", 1.0, top_n, ratio)
    np.testing.assert_allclose(ctx, p @ np.repeat(v, HQ // HKV, 1), rtol=1e-12, atol=1e-12)
    g = HQ // HKV
    kb, vr = sk * sign_pm1(np.repeat(k, g, 1)), np.repeat(v, g, 1)
    qb = sq * sign_pm1(q)
    dp = w @ np.swapaxes(vr, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / math.sqrt(D)
    np.testing.assert_allclose(dq, (ds @ kb) * (np.abs(q / sq) <= t), rtol=1e-12, atol=1e-13)
    dk_rep = (np.swapaxes(ds, -1, -2) @ qb).reshape(B, HKV, g, T, D).sum(2)
    np.testing.assert_allclose(dk, dk_rep * (np.abs(k / sk) <= t), rtol=1e-12, atol=1e-13)
    assert_gradient(dv, lambda: float((core.forward(q, k, v, mask, 0)[0] * w).sum()), v,
                    rtol=1e-6, atol=1e-9)


class _Targets:
    def __init__(self, qk, weight):
        self._qk, self.weight = qk, weight

    def qk(self, layer):
        return self._qk[layer]


def _attention_kl_all_at_once(teacher, student_scores, valid_all, mask, n_maps):
    """HAD.md's L_attn from full (T, T) maps of every layer at once."""
    total = 0.0
    rows = mask[:, None, :, None]
    for (q_t, k_t), s_s, valid in zip(teacher, student_scores, valid_all):
        g = q_t.shape[1] // k_t.shape[1]
        s_t = q_t @ np.swapaxes(np.repeat(k_t, g, 1), -1, -2) / math.sqrt(q_t.shape[-1])

        def log_softmax(x):
            z = np.where(valid, x, -np.inf)
            top = z.max(-1, keepdims=True)
            top[~np.isfinite(top)] = 0
            return z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))

        lt, ls = log_softmax(s_t), log_softmax(s_s)
        with np.errstate(invalid="ignore"):
            total += np.where(valid & rows, np.exp(lt) * (lt - ls), 0.0).sum()
    return total / (n_maps * mask.sum())


@pytest.mark.parametrize("transform", ["tanh1", "ste"])
def test_attention_loss_layer_by_layer_equals_all_at_once(transform):
    rng = np.random.default_rng(6)
    layers = 2
    student = [_inputs(seed=10 + i) for i in range(layers)]
    mask = student[0][3]
    teacher = [(rng.standard_normal((B, HQ, T, D)), rng.standard_normal((B, HKV, T, D)))
               for _ in range(layers)]
    sq, sk = [0.9, 1.2], [1.1, 0.7]
    core = HADCausalCore(sq, sk, top_n=2, transform=transform, c=2.0)
    core.max_block_rows = 3
    core.attention_targets = _Targets(teacher, 0.5)
    core.attention_loss = 0.0
    scores, valids = [], []
    for layer, (q, k, v, _) in enumerate(student):
        core.forward(q, k, v, mask, layer, train=True)
        _, s, valid, _ = reference(q, k, v, mask, sq[layer], sk[layer], transform, 2.0, 2)
        scores.append(s)
        valids.append(valid)
    expected = _attention_kl_all_at_once(teacher, scores, valids, mask, layers * HQ)
    assert core.attention_loss == pytest.approx(expected, rel=1e-10)
    core.attention_loss = 0.0
    core.attention_targets = None
    core.forward(*student[0][:3], mask, 0, train=True)
    assert core.attention_loss == 0.0


@pytest.mark.parametrize("top_n", [3, None])
def test_attention_loss_gradient_matches_finite_differences(top_n):
    q, k, v, mask = _inputs(seed=7)
    rng = np.random.default_rng(8)
    teacher = {1: (rng.standard_normal(q.shape), rng.standard_normal(k.shape))}
    core = HADCausalCore([0.9, 1.3], [1.1, 0.8], top_n=top_n, top_n_ratio=0.45,
                         transform="tanh1", c=1.5)
    core.max_block_rows = 3
    weight = 0.7
    core.attention_targets = _Targets(teacher, weight)
    w = _weights(q.shape, 9)

    def loss():
        core.attention_loss = 0.0
        ctx, _ = core.forward(q, k, v, mask, 1, train=True)
        return float((ctx * w).sum()) + weight * core.attention_loss

    loss()
    ctx, cache = core.forward(q, k, v, mask, 1, train=True)
    assert core.attention_loss > 0
    dq, dk, dv = core.backward(cache, w)
    for name, arr, grad in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
        assert_gradient(grad, loss, arr, rtol=2e-5, atol=1e-8, err_msg=name)


def tiny_config(**kw):
    base = dict(vocab_size=23, hidden_size=16, intermediate_size=10, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=4, rms_norm_eps=1e-6,
                rope_theta=1000.0, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    return LlamaConfig(**{**base, **kw})


def tiny_model(seed=0, dtype=np.float64, **kw):
    return LlamaModel.random(tiny_config(**kw), seed=seed, dtype=dtype, std=0.5)


@pytest.mark.parametrize("transform,top_n", [("tanh1", 3), ("tanh2", 3), ("ste", 3),
                                             ("tanh1", None), ("ste", None)])
def test_decoder_gradients_with_the_had_core(transform, top_n):
    # top_n None: N per row (top_n_ratio 0.5)
    model = tiny_model(seed=1)
    model.attention_core = HADCausalCore([0.8, 1.1], [1.2, 0.9], top_n=top_n, top_n_ratio=0.5,
                                         transform=transform, c=1.5)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 23, size=(2, 6))
    mask = np.ones((2, 6), int)
    mask[1, 4:] = 0
    weight = rng.standard_normal((2, 6, 23)) * mask[..., None]

    def loss():
        return float((model.forward(ids, mask, train=True).logits * weight).sum())

    model.forward(ids, mask, train=True)
    grads = model.backward(dlogits=weight)
    names = ["layers.1.self_attn.v_proj.weight", "layers.1.self_attn.o_proj.weight"]
    if transform != "ste":  # ste: q, k reach the loss only through signs (no true gradient)
        names += ["layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
                  "embed_tokens.weight"]
    for name in names:
        entries = pick_entries(model.params[name].size, 12, np.random.default_rng(4))
        model._cache = None
        assert_gradient(grads[name], loss, model.params[name], entries, rtol=1e-4, atol=1e-8,
                        err_msg=name)


@pytest.mark.parametrize("top_n,kernels", [(2, False), (None, False), (None, True)])
def test_causal_future_tokens_do_not_change_earlier_outputs(top_n, kernels):
    # with N per row (top_n None, ratio 0.3) too: a row's N depends on what it sees only
    model = tiny_model(seed=2)
    model.attention_core = HADCausalCore([0.8, 1.1], [1.2, 0.9], top_n=top_n, top_n_ratio=0.3,
                                         transform="hard" if kernels else "ste",
                                         use_kernels=kernels)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 23, size=(1, 10))
    other = ids.copy()
    other[0, 6:] = rng.integers(0, 23, size=4)
    a = model.forward(ids).logits
    b = model.forward(other).logits
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_recording_core_keeps_post_rope_qk_and_serves_as_targets():
    teacher = tiny_model(seed=3)
    rec = RecordingCausalCore(CausalFloatAttentionCore(), weight=0.25)
    teacher.attention_core = rec
    ids = np.random.default_rng(6).integers(0, 23, size=(2, 5))
    plain = tiny_model(seed=3).forward(ids).logits
    np.testing.assert_array_equal(teacher.forward(ids).logits, plain)
    q0, k0 = rec.qk(0)
    assert q0.shape == (2, 4, 5, 4) and k0.shape == (2, 2, 5, 4)
    with pytest.raises(HadrefError, match="nothing recorded"):
        rec.qk(5)
    # the student is the teacher with a HAD core: tanh1 at large c is about the float core,
    # so the attention loss is small but positive
    student = tiny_model(seed=3)
    core = HADCausalCore([1.0, 1.0], [1.0, 1.0], top_n=5, transform="tanh1", c=50.0)
    core.attention_targets = rec
    student.attention_core = core
    student.forward(ids, train=True)
    assert 0 < core.attention_loss < 1e-3
@pytest.mark.parametrize("dtype,top_n", [(np.float32, 5), (np.float64, 5), (np.float32, None),
                                         (np.float64, None)])
def test_hard_dense_forward_equals_packed_kernels(dtype, top_n):
    # top_n None: N per row (ratio 0.2)
    rng = np.random.default_rng(7)
    b, t, d = 2, 40, 64
    q = rng.standard_normal((b, HQ, t, d)).astype(dtype)
    k, v = (rng.standard_normal((b, HKV, t, d)).astype(dtype) for _ in range(2))
    k[:, :, 10:20] = k[:, :, 5:6]  # ties
    q[:, :, :3] = q[:, :, 3:4]
    mask = np.ones((b, t), bool)
    mask[1, 30:] = False
    mask[1, 2] = False
    sq, sk = [0.6, 1.7], [1.2, 0.4]
    fast = HADCausalCore.for_inference(sq, sk, top_n=top_n, top_n_ratio=0.2)
    slow = HADCausalCore(sq, sk, top_n=top_n, top_n_ratio=0.2, transform="hard")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for layer, rows in ((0, t), (1, 9)):  # tile kernel (>= 16 rows) and row kernel
        args = (q[:, :, :rows], k[:, :, :rows], v[:, :, :rows], mask[:, :rows], layer)
        ctx_fast = fast.forward(*args)[0]
        assert ctx_fast.dtype == dtype
        np.testing.assert_allclose(ctx_fast, slow.forward(*args)[0], rtol=tol, atol=tol)


def test_binarized_teacher_shares_weights_and_runs_hard():
    model = tiny_model(seed=4, dtype=np.float32)
    hard = binarized_teacher(model, [1.0, 1.0], [1.0, 1.0], top_n=3)
    assert isinstance(model.attention_core, CausalFloatAttentionCore)
    assert hard.attention_core.transform == "hard" and hard.attention_core.use_kernels
    assert hard.params["embed_tokens.weight"] is model.params["embed_tokens.weight"]
    ids = np.array([[3, 4, 5, 6, 7, 8]])
    assert not np.allclose(hard.forward(ids).logits, model.forward(ids).logits)
    with pytest.raises(HadrefError, match="sigma_q"):
        binarized_teacher(model, [1.0], [1.0])
    assert hard.had["stage"] == "binarized" and hard.had["top_n"] == 3 and model.had is None


def _student(seed=5, top_n=None):
    model = tiny_model(seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed)
    model.attention_core = HADCausalCore.for_inference(rng.uniform(0.5, 1.5, 2),
                                                       rng.uniform(0.5, 1.5, 2), top_n=top_n,
                                                       top_n_ratio=0.3)
    return model


@pytest.mark.parametrize("top_n", [2, 5, None])
def test_cached_generation_on_packed_keys_equals_full_forwards(top_n):
    # a fixed N, and N per row (top_n None: ratio 0.3, rows keep 1..9 keys): a cached
    # position keeps what a full forward's row of the same position keeps
    model = _student(top_n=top_n)
    prompt = np.array([3, 7, 11, 5, 9, 1, 4] * 3)  # 21 rows: the prefill runs the tile kernel
    new = model.generate(prompt, 10, stop_at_eos=False)
    seq = list(prompt)
    for _ in range(10):  # greedy from full forwards (packed kernels, no cache)
        seq.append(int(np.argmax(model.forward(np.array([seq])).logits[0, -1])))
    assert new.tolist() == seq[len(prompt):]
    cache = model.new_kv_cache(len(seq))
    from hadref.had.cache import PackedCausalKVCache

    assert isinstance(cache, PackedCausalKVCache)
    model.step(np.array([seq[:5]]), cache)
    model.step(np.array([seq[5:22]]), cache)  # 17 new positions at once: tiles after a cache
    model.step(np.array([seq[22:25]]), cache)  # and 3 (rows)
    for t in range(25, len(seq)):
        step = model.step(np.array([[seq[t]]]), cache)[0]
    full = model.forward(np.array([seq])).logits[0, -1]
    np.testing.assert_allclose(step, full, rtol=1e-5, atol=1e-5)
    # and the dense training path of the same selection
    dense = _student(top_n=top_n)
    dense.attention_core.use_kernels = False
    np.testing.assert_allclose(dense.forward(np.array([seq])).logits[0, -1], full, rtol=1e-5,
                               atol=1e-5)


def test_packed_cache_bytes_per_token():
    from hadref.had.cache import PackedCausalKVCache

    cache = PackedCausalKVCache(30, 1, 3, 16, 64, np.float32)  # SmolLM2-135M's attention
    assert cache.key_bytes_per_token == 8
    assert cache.bytes_per_token == 30 * 3 * (8 + 64 * 4)
    float_cache = CausalFloatAttentionCore().new_kv_cache(30, 1, 3, 16, 64, np.float32)
    assert float_cache.nbytes // 16 == 30 * 3 * 2 * 64 * 4
    with pytest.raises(HadrefError, match="capacity"):
        cache.append(0, np.zeros((1, 3, 17, 64), np.float32), np.zeros((1, 3, 17, 64), np.float32))


@pytest.mark.parametrize("top_n,ratio", [(6, None), (None, 0.3), (None, 0.5)])
def test_training_selection_equals_packed_topn_exactly(top_n, ratio):
    import hadref

    rng = np.random.default_rng(11)
    b, t, d = 2, 37, 64
    q = rng.standard_normal((b, HQ, t, d))
    k, v = (rng.standard_normal((b, HKV, t, d)) for _ in range(2))
    k[:, :, 20:30] = k[:, :, 3:4]  # ties at the N-th place
    mask = np.ones((b, t), bool)
    mask[0, 5] = False
    mask[1, 25:] = False
    core = HADCausalCore([0.3], [0.4], top_n=top_n, top_n_ratio=ratio or 0.117,
                         transform="ste")  # ste selects as hard
    core.max_block_rows = 8
    _, cache = core.forward(q, k, v, mask, 0, train=True)
    idx, _ = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), d, top_n,
                                 key_mask=mask[:, None, :], causal=True, top_n_ratio=ratio)
    assert cache.idx.shape[-1] == idx.shape[-1] == core.top_n_for(t)
    stored = cache.idx.reshape(b, HQ, t, -1)
    used = cache.probs.reshape(stored.shape) > 0
    for flat in np.ndindex(b, HQ, t):
        assert sorted(stored[flat][used[flat]]) == sorted(idx[flat][idx[flat] >= 0]), flat


def test_decoder_gradient_with_the_attention_loss_from_a_recorded_teacher():
    teacher = tiny_model(seed=6)
    rec = RecordingCausalCore(CausalFloatAttentionCore(), weight=0.8)
    teacher.attention_core = rec
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 23, size=(2, 6))
    mask = np.ones((2, 6), int)
    mask[1, 5:] = 0
    teacher.forward(ids, mask)
    student = tiny_model(seed=8)
    core = HADCausalCore([0.8, 1.1], [1.2, 0.9], top_n=3, transform="tanh2", c=0.7)
    core.attention_targets = rec
    student.attention_core = core
    weight = rng.standard_normal((2, 6, 23)) * mask[..., None]

    def loss():
        core.attention_loss = 0.0
        out = float((student.forward(ids, mask, train=True).logits * weight).sum())
        return out + rec.weight * core.attention_loss

    loss()
    assert core.attention_loss > 0
    grads = student.backward(dlogits=weight)
    for name in ("layers.0.self_attn.q_proj.weight", "layers.1.self_attn.k_proj.weight",
                 "layers.0.mlp.up_proj.weight"):
        entries = pick_entries(student.params[name].size, 10, np.random.default_rng(9))
        student._cache = None
        assert_gradient(grads[name], loss, student.params[name], entries, rtol=1e-4, atol=1e-8,
                        err_msg=name)
