"""HADAttentionCore plugged into a tiny random BertModel (2 layers, hidden 32)."""

import numpy as np
import pytest
from gradcheck import assert_gradient, pick_entries

import hadref
from hadref.engine.bert import BertModel
from hadref.engine.config import BertConfig
from hadref.had.core import HADAttentionCore

LAYERS, HEADS, HIDDEN, NB, NT = 2, 4, 32, 2, 7


def _model(seed=0):
    cfg = BertConfig(vocab_size=30, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=37,
                     max_position_embeddings=16, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = BertModel.random(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for name, value in model.params.items():  # O(1) weights: init-scale ones give tiny gradients
        value[...] = rng.standard_normal(value.shape) * (0.3 if value.ndim == 2 else 0.2) \
            + (1.0 if name.endswith("LayerNorm.weight") else 0.0)
    return model


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 30, (NB, NT))
    mask = np.ones((NB, NT), np.int64)
    mask[1, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("stage,c", [("tanh1", 2.0), ("tanh2", 0.5)])
def test_full_model_gradient_matches_finite_differences(stage, c):
    model = _model()
    model.attention_core = HADAttentionCore([0.8, 1.3], [1.1, 0.9], top_n=3, transform=stage, c=c)
    ids, mask = _batch()
    rng = np.random.default_rng(2)
    r_hidden = rng.standard_normal((NB, NT, HIDDEN))
    key_valid = mask.astype(bool)[:, None, None, :]
    r_scores = [rng.standard_normal((NB, HEADS, NT, NT)) * key_valid for _ in range(LAYERS)]

    def loss():
        out = model.forward(ids, mask, output_scores=True, train=True)
        return float((out.last_hidden_state * r_hidden).sum()
                     + sum((s * r).sum() for s, r in zip(out.scores, r_scores)))

    loss()
    grads = model.backward(dhidden=r_hidden, dscores=r_scores)
    # every query/key/value weight of both layers (where HAD's backward acts) and a sample
    # of the rest, by central differences
    names = [n for n in model.params if "attention.self" in n and n.endswith("weight")]
    names += ["embeddings.word_embeddings.weight", "encoder.layer.0.intermediate.dense.weight",
              "encoder.layer.1.attention.output.dense.bias"]
    for name in names:
        entries = pick_entries(model.params[name].size, 6, np.random.default_rng(len(name)))
        assert_gradient(grads[name], loss, model.params[name], entries, rtol=1e-5, atol=1e-6,
                        err_msg=name)


class _Recording(HADAttentionCore):
    """Remembers what the engine hands the core, layer by layer."""

    def forward(self, q, k, v, key_mask, layer, need_scores=False):
        ctx, cache, aux = super().forward(q, k, v, key_mask, layer, need_scores)
        self.seen[layer] = (q.copy(), k.copy(), v.copy(), key_mask.copy(), ctx.copy())
        return ctx, cache, aux


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_with_hard_core_equals_plain_array_had_attention_per_layer(dtype):
    model = _model(seed=4).astype(dtype)
    sq, sk, top_n = np.array([0.7, 1.2]), np.array([1.4, 0.6]), 3
    core = _Recording(sq, sk, top_n, transform="hard", use_kernels=True)
    core.seen = {}
    model.attention_core = core
    ids, mask = _batch(5)
    out_fast = model.forward(ids, mask, output_attentions=True)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    for layer in range(LAYERS):
        q, k, v, key_mask, ctx = core.seen[layer]
        expected = hadref.had_attention(q, k, v, top_n, sq[layer], sk[layer],
                                        key_mask=key_mask[:, None, :])
        np.testing.assert_array_equal(ctx, expected)  # the same kernels, bit for bit
        # the probabilities the model reports have the top-N support on valid keys
        probs = out_fast.attentions[layer]
        assert ((probs > 0).sum(-1) <= top_n).all()
        assert (probs[1][..., 5:] == 0).all()
    # the training path's hard forward gives the same model output
    model.attention_core = HADAttentionCore(sq, sk, top_n, transform="hard")
    out_slow = model.forward(ids, mask)
    np.testing.assert_allclose(out_fast.last_hidden_state, out_slow.last_hidden_state,
                               rtol=tol, atol=tol)
