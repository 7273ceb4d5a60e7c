"""The whole model: finite-difference gradients in float64 over random small configs,
shapes and masks (hypothesis), the attention hook, dropout reproducibility, input checks."""

import numpy as np
import pytest
from gradcheck import central_differences, pick_entries
from hypothesis import given, settings
from hypothesis import strategies as st

from hadref.engine.bert import BertModel, expected_shapes
from hadref.engine.config import BertConfig
from hadref.engine.layers.attention import FloatAttentionCore
from hadref.errors import HadrefError


def small_config(layers=2, heads=2, d=2, inner=5, vocab=11, positions=8, labels=None,
                 dropout=0.0):
    return BertConfig(vocab_size=vocab, hidden_size=heads * d, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=inner,
                      max_position_embeddings=positions, num_labels=labels,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def random_model(cfg, seed):
    """float64 model with O(1) random parameters (init-scale ones make tiny gradients)."""
    model = BertModel.random(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for name, value in model.params.items():
        value[...] = rng.standard_normal(value.shape) * (0.5 if value.ndim == 2 else 0.2) \
            + (1.0 if name.endswith("LayerNorm.weight") else 0.0)
    return model


def _check_entries(model, grads, loss, names, pick, per_param=3):
    """Central differences of ``loss()`` at ``per_param`` random entries of each named
    parameter against the analytic gradients (float64)."""
    for name in names:
        entries = pick_entries(model.params[name].size, per_param, pick)
        numeric = central_differences(loss, model.params[name], entries)
        analytic = grads[name].reshape(-1)[entries]
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), name


@settings(max_examples=25)
@given(st.integers(1, 2), st.sampled_from([(1, 3), (2, 2), (3, 1)]), st.integers(1, 3),
       st.integers(1, 6), st.sampled_from([None, 1, 3]), st.booleans(), st.booleans(),
       st.integers(0, 10_000))
def test_model_gradients_match_finite_differences(layers, heads_d, nb, nt, labels, dropout,
                                                  with_scores, seed):
    heads, d = heads_d
    cfg = small_config(layers, heads, d, labels=labels, dropout=0.25 if dropout else 0.0)
    model = random_model(cfg, seed)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (nb, nt))
    types = rng.integers(0, 2, (nb, nt))
    mask = (rng.random((nb, nt)) < 0.7).astype(np.int64)
    mask[:, 0] = 1
    r_hidden = rng.standard_normal((nb, nt, cfg.hidden_size))
    r_logits = rng.standard_normal((nb, labels)) if labels else None
    r_scores = [rng.standard_normal((nb, heads, nt, nt)) for _ in range(layers)]

    def run():
        return model.forward(ids, mask, types, output_scores=with_scores, train=True,
                             rng=np.random.default_rng(seed))

    def loss():
        out = run()
        value = (out.last_hidden_state * r_hidden).sum()
        if labels:
            value += (out.logits * r_logits).sum()
        if with_scores:
            value += sum((s * r).sum() for s, r in zip(out.scores, r_scores))
        return float(value)

    run()
    grads = model.backward(dlogits=r_logits, dhidden=r_hidden,
                           dscores=r_scores if with_scores else None)
    assert list(grads) == list(model.params)
    _check_entries(model, grads, loss, model.params, np.random.default_rng(seed + 2))


@settings(max_examples=15)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.booleans(), st.booleans(),
       st.integers(0, 10_000))
def test_logits_only_backward_matches_the_full_one_and_finite_differences(
        layers, nb, nt, dropout, with_scores, seed):
    """Without dhidden the last layer's backward runs on the [CLS] row only (its output
    gradient is the pooler's); the gradients are those of the full backward."""
    cfg = small_config(layers, labels=3, dropout=0.25 if dropout else 0.0)
    model = random_model(cfg, seed)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (nb, nt))
    mask = (rng.random((nb, nt)) < 0.7).astype(np.int64)
    mask[:, 0] = 1
    r_logits = rng.standard_normal((nb, 3))
    # scores gradients on all but the last layer keep the shortcut on
    r_scores = [rng.standard_normal((nb, 2, nt, nt)) for _ in range(layers - 1)] + [None]

    def run():
        return model.forward(ids, mask, output_scores=with_scores, train=True,
                             rng=np.random.default_rng(seed))

    def backward(**extra):
        run()
        return model.backward(dlogits=r_logits, dscores=r_scores if with_scores else None,
                              **extra)

    grads = backward()
    full = backward(dhidden=np.zeros((nb, nt, cfg.hidden_size)))  # no shortcut
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, full[name], rtol=1e-12, atol=1e-14, err_msg=name)

    def loss():
        out = run()
        value = (out.logits * r_logits).sum()
        if with_scores:
            value += sum((s * r).sum() for s, r in zip(out.scores, r_scores) if r is not None)
        return float(value)

    names = ("encoder.layer.%d.output.dense.weight" % (layers - 1),
             "encoder.layer.%d.attention.self.key.weight" % (layers - 1),
             "embeddings.word_embeddings.weight")
    _check_entries(model, grads, loss, names, np.random.default_rng(seed + 2))


def test_padding_does_not_change_valid_tokens():
    """Extra padding keys get probability 0, so valid positions are unchanged."""
    cfg = small_config(labels=2)
    model = random_model(cfg, 3)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.vocab_size, (2, 4))
    short = model.forward(ids, np.ones((2, 4), np.int64), output_attentions=True)
    padded_ids = np.concatenate([ids, np.zeros((2, 3), np.int64)], axis=1)
    mask = np.concatenate([np.ones((2, 4)), np.zeros((2, 3))], axis=1).astype(np.int64)
    long = model.forward(padded_ids, mask, output_attentions=True)
    np.testing.assert_allclose(long.last_hidden_state[:, :4], short.last_hidden_state,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(long.logits, short.logits, rtol=1e-12, atol=1e-12)
    for a in long.attentions:
        assert (a[..., 4:] == 0).all()
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-12)


def test_attention_hook_sees_contract_shapes_and_can_replace_the_core():
    cfg = small_config(layers=2, heads=2, d=3)
    model = random_model(cfg, 5)
    calls = []

    class Recording(FloatAttentionCore):
        supports_dropout = False       # a core of the plain protocol: no capabilities
        takes_strided_views = False

        def forward(self, q, k, v, key_mask, layer, need_scores):
            calls.append((q.shape, k.shape, v.shape, key_mask.dtype, layer, need_scores,
                          q.flags.c_contiguous))
            return super().forward(q, k, v, key_mask, layer, need_scores)

        def backward(self, cache, dctx, dscores=None):
            calls.append(("backward", dctx.shape, dscores is not None))
            return super().backward(cache, dctx, dscores)

    ids = np.array([[1, 2, 3, 0, 0]])
    mask = np.array([[1, 1, 1, 0, 0]])
    ref = model.forward(ids, mask, output_scores=True)
    model.attention_core = Recording()
    out = model.forward(ids, mask, output_scores=True, train=True)
    np.testing.assert_array_equal(out.last_hidden_state, ref.last_hidden_state)
    assert calls == [((1, 2, 5, 3),) * 3 + (np.bool_, 0, True, True),
                     ((1, 2, 5, 3),) * 3 + (np.bool_, 1, True, True)]
    model.backward(dhidden=np.ones_like(out.last_hidden_state),
                   dscores=[np.ones((1, 2, 5, 5))] * 2)
    assert calls[2:] == [("backward", (1, 2, 5, 3), True)] * 2
    np.testing.assert_allclose(out.scores[0][0, 0], ref.scores[0][0, 0])


def test_dropout_is_reproducible_with_a_seeded_generator_and_off_in_eval():
    cfg = small_config(labels=2, dropout=0.3)
    model = random_model(cfg, 1)
    ids = np.array([[1, 2, 3, 4]])
    a = model.forward(ids, train=True, rng=np.random.default_rng(7)).logits
    b = model.forward(ids, train=True, rng=np.random.default_rng(7)).logits
    c = model.forward(ids, train=True, rng=np.random.default_rng(8)).logits
    e1, e2 = model.forward(ids).logits, model.forward(ids).logits
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(e1, e2)
    assert not np.allclose(a, e1)


def test_backward_needs_a_training_forward_and_consumes_it():
    model = random_model(small_config(labels=2), 0)
    with pytest.raises(HadrefError, match="forward"):
        model.backward(dlogits=np.ones((1, 2)))
    model.forward(np.array([[1, 2]]), train=True)
    model.forward(np.array([[1, 2, 3]]))  # eval forwards keep the training cache
    grads = model.backward(dlogits=np.ones((1, 2)))
    assert grads["classifier.bias"].tolist() == [1.0, 1.0]
    with pytest.raises(HadrefError, match="no cache"):
        model.backward(dlogits=np.ones((1, 2)))
    model.forward(np.array([[1, 2]]), train=True)
    with pytest.raises(HadrefError, match="at least one"):
        model.backward()


def test_gradients_only_reach_what_the_loss_touches():
    model = random_model(small_config(labels=2), 0)
    model.forward(np.array([[1, 2, 3]]), train=True)
    grads = model.backward(dhidden=np.ones((1, 3, 4)))
    assert not grads["classifier.weight"].any() and not grads["pooler.dense.weight"].any()
    word = grads["embeddings.word_embeddings.weight"]
    assert word[[1, 2, 3]].any(axis=1).all() and not np.delete(word, [1, 2, 3], axis=0).any()
    pos = grads["embeddings.position_embeddings.weight"]
    assert pos[:3].any(axis=1).all() and not pos[3:].any()


@pytest.mark.parametrize("ids, mask, types, match", [
    (np.zeros((2, 9), np.int64), None, None, "position table"),
    (np.array([[1, 11]]), None, None, r"token ids must be in \[0, 11\)"),
    (np.array([[-1, 2]]), None, None, "token ids"),
    (np.array([1, 2]), None, None, "input_ids"),
    (np.array([[1.0, 2.0]]), None, None, "input_ids"),
    (np.array([[1, 2]]), np.array([[1, 1, 1]]), None, "attention_mask"),
    (np.array([[1, 2]]), None, np.array([[0, 2]]), "token_type_ids"),
])
def test_bad_inputs_raise_clear_errors(ids, mask, types, match):
    model = random_model(small_config(), 0)
    with pytest.raises(HadrefError, match=match):
        model.forward(ids, mask, types)


def test_bad_parameters_and_configs_are_named():
    cfg = small_config()
    params = BertModel.random(cfg).params
    with pytest.raises(HadrefError, match="missing parameter encoder.layer.1.output.dense.bias"):
        BertModel(cfg, {k: v for k, v in params.items() if k != "encoder.layer.1.output.dense.bias"})
    with pytest.raises(HadrefError, match="unexpected parameter extra"):
        BertModel(cfg, {**params, "extra": np.zeros(3, np.float32)})
    bad = dict(params)
    bad["pooler.dense.bias"] = np.zeros(5, np.float32)
    with pytest.raises(HadrefError, match=r"pooler.dense.bias has shape \(5,\)"):
        BertModel(cfg, bad)
    bad["pooler.dense.bias"] = np.full(4, np.nan, np.float32)
    with pytest.raises(HadrefError, match="non-finite"):
        BertModel(cfg, bad)
    with pytest.raises(HadrefError, match="num_attention_heads"):
        BertConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(HadrefError, match="hidden_act"):
        BertConfig(hidden_act="relu")


def test_random_model_add_classifier_copy_and_astype():
    cfg = small_config(labels=None)
    model = BertModel.random(cfg, seed=2)
    assert model.num_labels is None and model.dtype == np.float32
    assert set(model.params) == set(expected_shapes(cfg))
    out = model.forward(np.array([[1, 2, 3]]))
    assert out.logits is None and out.pooled.shape == (1, 4)
    assert out.last_hidden_state.dtype == np.float32
    model.add_classifier(3, seed=1)
    assert model.config.num_labels == 3 and model.forward(np.array([[1, 2]])).logits.shape == (1, 3)
    twin = model.copy()
    twin.params["classifier.bias"] += 1
    assert not model.params["classifier.bias"].any()
    wide = model.astype(np.float64)
    assert wide.dtype == np.float64
    np.testing.assert_allclose(wide.forward(np.array([[1, 2]])).logits,
                               model.forward(np.array([[1, 2]])).logits, rtol=1e-5, atol=1e-6)


def test_both_cores_satisfy_the_protocol_and_declare_their_capabilities():
    from hadref.engine.attention_core import AttentionCore, has_capability
    from hadref.had.core import HADAttentionCore

    float_core, had_core = FloatAttentionCore(), HADAttentionCore([1.0], [1.0], top_n=2)
    assert isinstance(float_core, AttentionCore) and isinstance(had_core, AttentionCore)
    assert has_capability(float_core, "supports_dropout")
    assert has_capability(float_core, "takes_strided_views")
    assert not has_capability(had_core, "supports_dropout")
    assert not has_capability(had_core, "takes_strided_views")
    assert not has_capability(object(), "supports_dropout")   # undeclared means no
    with pytest.raises(ValueError, match="unknown attention-core capability"):
        has_capability(float_core, "fast")
