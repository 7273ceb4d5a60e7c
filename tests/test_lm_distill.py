"""LM distillation (issue 20): text windows and their hold-out, the next-token KL by finite
differences, sigma on post-RoPE q/k, the trainer on tiny random decoders (2 layers, grouped
heads, short windows: every stage and ablation runs, a few steps lower the loss, crash-resume
is bit-identical), the student file, and bad inputs (exit 2, one line)."""

import json
import math

import numpy as np
import pytest
from cli_run import error, ok, run
from gradcheck import assert_gradient

from hadref.data.text import (
    TextSource,
    Windows,
    WindowStream,
    build_windows,
    check_held_out,
    corpus_documents,
    cut_windows,
    read_text_file,
    split_holdout,
)
from hadref.distill.lm_losses import next_token_kl, token_nll
from hadref.distill.lm_settings import LMDistillSettings, gamma_for_tanh_steps
from hadref.errors import HadrefError

# --- data ---------------------------------------------------------------------------------


def test_cut_windows_pads_only_the_last():
    w = cut_windows(np.arange(11), 4, pad_id=99)
    assert w.ids.shape == (3, 4)
    np.testing.assert_array_equal(w.ids[:2].ravel(), np.arange(8))
    np.testing.assert_array_equal(w.ids[2], [8, 9, 10, 99])
    np.testing.assert_array_equal(w.mask[2], [True, True, True, False])
    assert w.mask[:2].all() and w.tokens == 11
    # a remainder of one token is dropped (nothing to predict)
    assert len(cut_windows(np.arange(9), 4)) == 2


def test_holdout_is_seeded_disjoint_and_complete():
    w = cut_windows(np.arange(400), 8)
    train, held = split_holdout(w, 0.1, seed=3)
    assert len(held) == 5 and len(train) == 45
    again = split_holdout(w, 0.1, seed=3)
    np.testing.assert_array_equal(again[1].ids, held.ids)
    firsts = sorted(int(x) for x in np.concatenate([train.ids[:, 0], held.ids[:, 0]]))
    assert firsts == list(range(0, 400, 8))
    other = split_holdout(w, 0.1, seed=4)[1]
    assert not np.array_equal(other.ids, held.ids)
    with pytest.raises(HadrefError, match="none left for training"):
        split_holdout(cut_windows(np.arange(8), 8), 0.5, 0)


def test_window_stream_is_seeded_and_resumable():
    w = cut_windows(np.arange(80), 4)          # 20 windows
    a = WindowStream(w, 3, seed=1)
    seen = [a.next().index.tolist() for _ in range(9)]   # 6 full batches per epoch, then epoch 1
    assert all(len(s) == 3 for s in seen)
    assert len({i for s in seen[:6] for i in s}) == 18
    b = WindowStream(w, 3, seed=1)
    [b.next() for _ in range(4)]
    c = WindowStream(w, 3, seed=1)
    c.restore(b.state())
    assert [c.next().index.tolist() for _ in range(5)] == seen[4:]
    with pytest.raises(HadrefError, match="seed"):
        WindowStream(w, 3, seed=2).restore(b.state())


def test_pydoc_corpus_is_english_prose():
    docs = corpus_documents("pydoc-topics")
    assert len(docs) > 50 and sum(map(len, docs)) > 100_000
    assert " the " in docs[0]
    with pytest.raises(HadrefError, match="unknown corpus 'nope'"):
        corpus_documents("nope")


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"", "holds no text"),
    (b"\n \n\n", "holds no text"),
    (b"abc\x00def", "not a text file"),
    (b"caf\xe9", "not UTF-8 text"),
])
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(HadrefError, match=message) as err:
        read_text_file(path)
    assert "\n" not in str(err.value) and "--data-text" in str(err.value)


def test_text_file_documents(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("First doc\nline two.\r\n\r\nSecond.\n\n\n  \nThird")
    assert read_text_file(path) == ["First doc\nline two.", "Second.", "Third"]


def test_held_out_text_overlap_is_refused():
    w = cut_windows(np.arange(200), 50)
    check_held_out(w, {"eval": np.arange(1000, 1100)}, span=8)
    with pytest.raises(HadrefError, match="--held-out-text eval"):
        check_held_out(w, {"eval": np.arange(120, 140)}, span=8)


# --- the output loss ------------------------------------------------------------------------


def _kl_reference(zt, zs, mask, tau):
    total, n = 0.0, 0
    for b in range(zt.shape[0]):
        for t in range(zt.shape[1]):
            if not mask[b, t]:
                continue
            pt = np.exp(zt[b, t] / tau - np.logaddexp.reduce(zt[b, t] / tau))
            ps = np.exp(zs[b, t] / tau - np.logaddexp.reduce(zs[b, t] / tau))
            total += float(np.sum(pt * np.log(pt / ps)))
            n += 1
    return total / n


@pytest.mark.parametrize("tau, chunk", [(1.0, 256), (2.0, 3), (0.5, 1)])
def test_next_token_kl_gradient_by_finite_differences(tau, chunk):
    rng = np.random.default_rng(0)
    zt = rng.normal(size=(2, 5, 7)) * 2
    zs = rng.normal(size=(2, 5, 7)) * 2
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    loss, grad = next_token_kl(zt, zs, mask, tau, chunk=chunk)
    assert loss == pytest.approx(_kl_reference(zt, zs, mask, tau), rel=1e-12)
    assert np.all(grad[1, 3:] == 0)
    assert_gradient(grad, lambda: next_token_kl(zt, zs, mask, tau, chunk=chunk)[0], zs,
                    rtol=1e-6, atol=1e-9)
    # in place into the student's logits: the same numbers
    zs2 = zs.copy()
    loss2, grad2 = next_token_kl(zt, zs2, mask, tau, chunk=chunk, out=zs2)
    assert grad2 is zs2 and loss2 == loss
    np.testing.assert_array_equal(grad2, grad)


def test_next_token_kl_zero_for_equal_and_float32_dtype():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1, 4, 9)).astype(np.float32)
    loss, grad = next_token_kl(z, z.copy())
    assert abs(loss) < 1e-12 and grad.dtype == np.float32 and np.abs(grad).max() < 1e-8
    with pytest.raises(HadrefError, match="equal"):
        next_token_kl(z, z[:, :3])


def test_token_nll_counts_predicted_tokens():
    z = np.zeros((1, 4, 5))
    ids = np.array([[0, 1, 2, 3]])
    total, n = token_nll(z, ids, np.array([[1, 1, 1, 0]]))
    assert n == 2 and total == pytest.approx(2 * math.log(5))


# --- settings -------------------------------------------------------------------------------


def test_lm_settings_defaults_and_checks():
    s = LMDistillSettings()
    assert s.schedule == "quick" and s.max_len == 1024 and s.effective_top_n == 120
    assert LMDistillSettings(max_len=256).effective_top_n == 30
    assert LMDistillSettings(top_n=8, top_n_ratio=None).effective_top_n == 8
    g = gamma_for_tanh_steps(100)
    plan = LMDistillSettings(gamma=g, stage3_steps=5, stage4_steps=5).make_schedule()
    assert abs(plan.stages[0].steps + plan.stages[1].steps - 100) <= 1
    for bad, message in [(dict(top_n_ratio=0.0), "--top-n-ratio"), (dict(attn_weight=-1.0), "--attn-weight"),
                         (dict(top_n=0), "--top-n"), (dict(schedule="fast"), "--schedule"),
                         (dict(lr=float("nan")), "--lr")]:
        with pytest.raises(HadrefError, match=message):
            LMDistillSettings(**bad).check()
