"""HADAttentionCore on the engine's attention hook: gradients, STE, hard path = packed path."""

import math

import numpy as np
import pytest
from gradcheck import assert_gradient
from masks import topn_mask

import hadref
from hadref.errors import HadrefError
from hadref.had.binarize import sign_pm1
from hadref.had.core import HADAttentionCore

B, H, T, D = 2, 2, 6, 5


def _inputs(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, H, T, D)).astype(dtype) for _ in range(3))
    mask = np.ones((B, T), bool)
    mask[1, 4:] = False
    return q, k, v, mask


def _loss(core, q, k, v, mask, w_ctx, w_scores):
    ctx, _, aux = core.forward(q, k, v, mask, 1, need_scores=True)
    return float((ctx * w_ctx).sum() + (aux["scores"] * w_scores).sum())


@pytest.mark.parametrize("stage,c", [("tanh1", 5.0), ("tanh1", 1.3), ("tanh2", 1.0), ("tanh2", 0.2)])
def test_tanh_stages_match_finite_differences(stage, c):
    q, k, v, mask = _inputs()
    core = HADAttentionCore([0.9, 1.4], [1.1, 0.7], top_n=3, transform=stage, c=c)
    rng = np.random.default_rng(1)
    ctx, cache, aux = core.forward(q, k, v, mask, 1, need_scores=True)
    w_ctx = rng.standard_normal(ctx.shape)
    w_scores = rng.standard_normal(aux["scores"].shape) * mask[:, None, None, :]
    dq, dk, dv = core.backward(cache, w_ctx, w_scores)
    for name, arr, grad in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
        assert_gradient(grad, lambda: _loss(core, q, k, v, mask, w_ctx, w_scores), arr,
                        rtol=2e-5, atol=1e-7, err_msg=name)


def test_scores_are_transformed_logits_before_the_mask_and_probs_use_topn():
    q, k, v, mask = _inputs()
    core = HADAttentionCore([1.0, 1.2], [1.0, 0.8], top_n=2, transform="tanh2", c=0.5)
    ctx, _, aux = core.forward(q, k, v, mask, 1, need_scores=True)
    qt = 1.2 * np.tanh(q / (0.5 * 1.2))
    kt = 0.8 * np.tanh(k / (0.5 * 0.8))
    scores = qt @ np.swapaxes(kt, -1, -2) / math.sqrt(D)
    np.testing.assert_allclose(aux["scores"], scores, rtol=1e-12)
    keep = topn_mask(scores, mask[:, None, None, :], 2)
    probs = aux["probs"]
    assert (probs[~keep] == 0).all()
    assert (probs[1][..., ~mask[1]] == 0).all()  # padding keys never selected
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    np.testing.assert_allclose(ctx, probs @ v, rtol=1e-12)


def test_ste_backward_is_its_definition():
    q, k, v, mask = _inputs(seed=3)
    sq, sk, t = 0.8, 1.1, 1.0
    core = HADAttentionCore([sq], [sk], top_n=3, transform="ste", ste_t=t)
    ctx, cache, aux = core.forward(q, k, v, mask, 0, need_scores=True)
    rng = np.random.default_rng(2)
    w_ctx, w_scores = rng.standard_normal(ctx.shape), rng.standard_normal(aux["scores"].shape)
    dq, dk, dv = core.backward(cache, w_ctx, w_scores)
    # definition: forward sign, backward the gradient of the surrogate through 1[|x/sigma| <= t]
    qb, kb = sq * sign_pm1(q), sk * sign_pm1(k)
    scores = qb @ np.swapaxes(kb, -1, -2) / math.sqrt(D)
    np.testing.assert_allclose(aux["scores"], scores, rtol=1e-12)
    p = aux["probs"]
    dp = w_ctx @ np.swapaxes(v, -1, -2)
    dz = p * (dp - (dp * p).sum(-1, keepdims=True)) + w_scores
    ds = dz / math.sqrt(D)
    np.testing.assert_allclose(dq, (ds @ kb) * (np.abs(q / sq) <= t), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dk, (np.swapaxes(ds, -1, -2) @ qb) * (np.abs(k / sk) <= t),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv, np.swapaxes(p, -1, -2) @ w_ctx, rtol=1e-12)
    # v is not binarized: its gradient is exact, check it by finite differences too
    eps, i = 1e-6, (1, 0, 2, 3)
    v2 = v.copy()
    v2[i] += eps
    up = float((core.forward(q, k, v2, mask, 0)[0] * w_ctx).sum())
    v2[i] -= 2 * eps
    down = float((core.forward(q, k, v2, mask, 0)[0] * w_ctx).sum())
    assert abs((up - down) / (2 * eps) - dv[i]) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hard_packed_forward_equals_training_forward(dtype):
    rng = np.random.default_rng(7)
    b, h, t, d = 3, 4, 33, 64
    q, k, v = (rng.standard_normal((b, h, t, d)).astype(dtype) for _ in range(3))
    q[:, :, :3] = q[:, :, 3:4]  # repeated rows and keys: ties
    k[:, :, 10:20] = k[:, :, 5:6]
    mask = np.ones((b, t), bool)
    mask[0, 20:] = False
    mask[2, :] = False  # a sequence with no valid key
    sq, sk = np.array([0.6, 1.7]), np.array([1.2, 0.4])
    fast = HADAttentionCore.for_inference(sq, sk, top_n=7)
    slow = HADAttentionCore(sq, sk, top_n=7, transform="hard")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for layer in (0, 1):
        ctx_fast, _, aux_fast = fast.forward(q, k, v, mask, layer, need_scores=False)
        ctx_slow, _, aux_slow = slow.forward(q, k, v, mask, layer, need_scores=False)
        assert ctx_fast.dtype == dtype
        np.testing.assert_allclose(ctx_fast, ctx_slow, rtol=tol, atol=tol)
        np.testing.assert_array_equal(aux_fast["probs"], aux_slow["probs"])
        assert (ctx_fast[2] == 0).all()
        # and the plain-array API gives the same per layer
        np.testing.assert_allclose(
            hadref.had_attention(q, k, v, 7, sq[layer], sk[layer], key_mask=mask[:, None, :]),
            ctx_slow, rtol=tol, atol=tol)
    # the ste stage's forward is the hard forward
    ste = HADAttentionCore(sq, sk, top_n=7, transform="ste")
    np.testing.assert_allclose(ste.forward(q, k, v, mask, 1)[0], slow.forward(q, k, v, mask, 1)[0],
                               rtol=tol, atol=tol)


def test_settings_validation_and_hard_backward():
    core = HADAttentionCore([1.0, 1.0], [1.0, 1.0], top_n=4)
    assert core.transform == "tanh1" and core.c == 5.0
    core.c = core.c * 0.9995  # the distillation schedule decays c between steps
    assert core.c == pytest.approx(4.9975)
    for attr, bad in (("c", 0.0), ("c", float("inf")), ("ste_t", -1.0), ("transform", "soft")):
        with pytest.raises(HadrefError, match=attr):
            setattr(core, attr, bad)
    with pytest.raises(HadrefError, match="sigma_k"):
        HADAttentionCore([1.0, 1.0], [1.0], top_n=4)
    with pytest.raises(HadrefError, match="sigma_q"):
        HADAttentionCore([1.0, -1.0], [1.0, 1.0], top_n=4)
    with pytest.raises(HadrefError, match="top_n"):
        HADAttentionCore([1.0], [1.0], top_n=0)
    q, k, v, mask = _inputs()
    with pytest.raises(HadrefError, match="layer"):
        core.forward(q, k, v, mask, 2, False)
    with pytest.raises(HadrefError, match="key_mask"):
        core.forward(q, k, v, mask[:, :3], 0, False)
    bad = q.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(HadrefError, match="finite"):
        core.forward(bad, k, v, mask, 0, False)
    hard = HADAttentionCore.for_inference([1.0], [1.0], top_n=2)
    assert hard.transform == "hard"
    _, cache, _ = hard.forward(q, k, v, mask, 0, False)
    with pytest.raises(HadrefError, match="inference only"):
        hard.backward(cache, np.ones_like(q))
