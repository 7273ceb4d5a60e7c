"""LM distillation (issue 20): text windows and their hold-out, the next-token KL by finite
differences, sigma on post-RoPE q/k, the trainer on tiny random decoders (2 layers, grouped
heads, short windows: every stage and ablation runs, a few steps lower the loss, crash-resume
is bit-identical), the student file, and bad inputs (exit 2, one line)."""

import json
import math
from pathlib import Path

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


# --- the trainer on a tiny random decoder ---------------------------------------------------


class _ListLog:
    def __init__(self):
        self.records = []

    def write(self, **record):
        self.records.append(record)


def _byte_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel

    from hadref.engine.bpe_tokenizer import BPETokenizer, tokenizer_json_from_vocab

    tokens = ["<|endoftext|>", "<|im_start|>"] + sorted(ByteLevel.alphabet())
    return BPETokenizer(tokenizer_json_from_vocab(tokens, [], [3, 3] + [1] * 256))


def _tiny_decoder(seed=0):
    """2 layers, 4 query heads on 2 key heads (grouped), d 8, a byte tokenizer; the
    weights are sharpened a little so that attention is not uniform."""
    from hadref.engine.config import LlamaConfig
    from hadref.engine.llama import LlamaModel

    cfg = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, max_position_embeddings=64, bos_token_id=1, eos_token_id=0)
    model = LlamaModel.random(cfg, seed=seed, std=0.2)
    model.tokenizer = _byte_tokenizer()
    return model


@pytest.fixture(scope="module")
def tiny():
    model = _tiny_decoder()
    rng = np.random.default_rng(5)
    windows = Windows(rng.integers(2, 258, size=(24, 12)).astype(np.int32),
                      np.ones((24, 12), bool))
    windows.mask[-1, 9:] = False          # one padded window
    train, held = split_holdout(windows, 0.1, 0)
    return model, train, held


# gamma 0.5: stage 1 c = 5, 2.5, 1.25 (3 steps); stage 2 c = 1 ... 0.0625 (5 steps)
_FAST = dict(gamma=0.5, stage3_steps=2, stage4_steps=2, sigma_batches=2, batch_size=2,
             max_len=12, lr=3e-3, lr_stage4=1e-3, top_n=4, top_n_ratio=None, eval_windows=2)


def _params_equal(a, b):
    return all(np.array_equal(a.params[n], b.params[n]) for n in a.params)


def test_stages_run_and_change_what_they_should(tiny):
    from hadref.distill.lm_trainer import distill_lm

    teacher, train, held = tiny
    before = {n: v.copy() for n, v in teacher.params.items()}
    log, seen, files = _ListLog(), [], []
    student, scores = distill_lm(teacher, train, held, LMDistillSettings(**_FAST), log=log,
                                 on_step=seen.append,
                                 on_stage=lambda k, m: files.append((k, m.had["stage"],
                                                                     m.attention_core.transform)))
    assert seen == list(range(1, 13))
    steps = [r for r in log.records if "stage" in r and "event" not in r]
    assert [r["stage"] for r in steps] == [1] * 3 + [2] * 5 + [3] * 2 + [4] * 2
    assert [r["c"] for r in steps[:8]] == [5.0, 2.5, 1.25, 1.0, 0.5, 0.25, 0.125, 0.0625]
    assert all(r["c"] is None for r in steps[8:])
    assert all(r["l_attn"] is not None and r["l_attn"] > 0 for r in steps[:10])
    assert all(r["l_attn"] is None and r["lr"] == 1e-3 for r in steps[10:])
    assert all(np.isfinite(r["loss"]) and r["l_out"] >= 0 for r in steps)
    assert all(np.array_equal(before[n], teacher.params[n]) for n in before)
    assert type(teacher.attention_core).__name__ == "CausalFloatAttentionCore"
    assert all(not np.array_equal(student.params[n], teacher.params[n]) for n in student.params)
    # held-out scores: the float teacher, the binarized teacher (0) and after every stage
    assert sorted(scores) == ["0", "1", "2", "3", "4", "teacher"]
    assert "kl" not in scores["teacher"] and all(scores[k]["kl"] > 0 for k in "01234")
    evals = [r for r in log.records if r.get("event") == "eval"]
    assert [r["stage"] for r in evals] == [0, 1, 2, 3, 4]
    assert files == [(1, "1", "hard"), (2, "2", "hard"), (3, "3", "hard"), (4, "4", "hard")]
    assert student.had["stage"] == "4" and student.had["top_n"] == 4
    assert student.attention_core.transform == "hard" and student.attention_core.use_kernels
    sigma = [r for r in log.records if r.get("event") == "sigma"][0]
    np.testing.assert_array_equal(student.had["sigma_q"], np.float32(sigma["sigma_q"]))


def test_sigma_is_the_std_of_post_rope_q_and_k(tiny):
    from hadref.distill.lm_sigma import estimate_sigma_lm
    from hadref.engine.layers.causal_attention import CausalFloatAttentionCore
    from hadref.had.causal_core import RecordingCausalCore

    teacher, train, _ = tiny
    sq, sk = estimate_sigma_lm(teacher, train, n_batches=1, batch_size=len(train), seed=0)
    rec = RecordingCausalCore(CausalFloatAttentionCore())
    saved, teacher.attention_core = teacher.attention_core, rec
    try:
        order = np.random.default_rng([0, 0x5161]).choice(len(train), len(train), replace=False)
        teacher.forward(train.ids[order].astype(np.int64), train.mask[order].astype(np.int64))
    finally:
        teacher.attention_core = saved
    mask = train.mask[order]
    for layer in range(2):
        q, k = rec.qk(layer)
        assert sq[layer] == pytest.approx(np.std(q.transpose(0, 2, 1, 3)[mask]), rel=1e-6)
        assert sk[layer] == pytest.approx(np.std(k.transpose(0, 2, 1, 3)[mask]), rel=1e-6)
    assert q.shape[1] == 4 and k.shape[1] == 2   # post-RoPE q of 4 heads, k of 2 key heads


def test_a_few_steps_lower_the_loss(tiny):
    """Stage 3 alone (STE) at a fixed batch: the output + attention loss falls."""
    from hadref.distill.lm_trainer import distill_lm

    teacher, train, _ = tiny
    one = train.subset([0, 1])
    log = _ListLog()
    distill_lm(teacher, one, None, LMDistillSettings(
        **{**_FAST, "gamma": 0.01, "c_start": 1.5, "stage3_steps": 12, "stage4_steps": 0,
           "lr": 1e-2}), log=log)
    steps = [r for r in log.records if r.get("stage") == 3 and "event" not in r]
    assert len(steps) == 12
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"]


@pytest.mark.parametrize("ablation", [dict(attn_loss=False), dict(tanh=False),
                                      dict(attn_loss_stages=[1, 2])])
def test_ablations(tiny, ablation):
    from hadref.distill.lm_trainer import distill_lm

    teacher, train, held = tiny
    log = _ListLog()
    distill_lm(teacher, train, None, LMDistillSettings(**{**_FAST, **ablation}), log=log)
    steps = [r for r in log.records if "stage" in r and "event" not in r]
    assert [r["stage"] for r in steps] == [1] * 3 + [2] * 5 + [3] * 2 + [4] * 2
    if ablation.get("attn_loss") is False:
        assert all(r["l_attn"] is None for r in steps)
    elif ablation.get("tanh") is False:     # w/o Tanh: STE from the first step, no c
        assert all(r["c"] is None for r in steps) and steps[0]["l_attn"] > 0
    else:
        assert all(r["l_attn"] is None for r in steps if r["stage"] == 3)


def _crash_at(step_no):
    def on_step(step):
        if step == step_no:
            raise RuntimeError("simulated crash")
    return on_step


def test_crash_resume_is_bit_identical(tiny, tmp_path):
    from hadref.distill.lm_trainer import distill_lm

    teacher, train, held = tiny
    settings = LMDistillSettings(**_FAST)
    straight, straight_scores = distill_lm(teacher, train, held, settings)
    ckpt = tmp_path / "crash.ckpt.h5"
    for crash in (2, 9):          # inside stage 1 (tanh, c mid-decay) and inside stage 3
        with pytest.raises(RuntimeError, match="simulated crash"):
            distill_lm(teacher, train, held, settings, checkpoint_path=ckpt,
                       checkpoint_every=0.0, on_step=_crash_at(crash))
        resumed, resumed_scores = distill_lm(teacher, train, held, settings,
                                             checkpoint_path=ckpt, resume=True)
        assert _params_equal(straight, resumed)
        # the held-out scores agree to rounding: numpy's float32 reductions (RMSNorm) may
        # round differently with another memory alignment of the same numbers
        assert sorted(resumed_scores) == sorted(straight_scores)
        for k, v in straight_scores.items():
            assert resumed_scores[k] == pytest.approx(v, rel=1e-6)
    # a resume with other settings is refused, naming the setting
    with pytest.raises(RuntimeError):
        distill_lm(teacher, train, held, settings, checkpoint_path=ckpt, checkpoint_every=0.0,
                   on_step=_crash_at(3))
    with pytest.raises(HadrefError, match="top_n"):
        distill_lm(teacher, train, held, LMDistillSettings(**{**_FAST, "top_n": 5}),
                   checkpoint_path=ckpt, resume=True)


# --- the job and the command ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    from hadref.engine.io import save

    folder = tmp_path_factory.mktemp("lm")
    save(_tiny_decoder(), folder / "teacher.h5")
    words = "the cat sat on a mat while the dog ran to the park and back again".split()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, size=30)) + "." for _ in range(12)]
    (folder / "train.txt").write_text("\n\n".join(docs))
    return folder


_CLI_FAST = ["--gamma", "0.5", "--stage3-steps", "1", "--stage4-steps", "1",
             "--sigma-batches", "1", "--top-n", "4", "--max-len", "16", "--lr", "1e-3",
             "--eval-windows", "1", "--quiet"]


def test_cli_writes_a_student_per_stage_and_a_final_one(lm_files, tmp_path):
    import hadref

    out = tmp_path / "student.h5"
    r = ok(run("distill", lm_files / "teacher.h5", "--lm", "--data-text", lm_files / "train.txt",
               *_CLI_FAST, "-o", out, "--json"))
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["student"] == str(out) and result["steps"] == 10
    assert sorted(result["held_out"]) == ["0", "1", "2", "3", "4", "teacher"]
    assert [Path(p).name for p in result["stage_files"]] == [
        "student-stage1.h5", "student-stage2.h5", "student-stage3.h5"]
    student = hadref.load(out)
    assert student.had["stage"] == "4" and student.had["top_n"] == 4
    assert type(student.attention_core).__name__ == "HADCausalCore"
    assert hadref.load(tmp_path / "student-stage2.h5").had["stage"] == "2"
    assert not (tmp_path / "student.ckpt.h5").exists()
    log = [json.loads(line) for line in (tmp_path / "student.log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["data"]["train_windows"] >= 1


def test_cli_resume_after_interrupt_finishes_the_same(lm_files, tmp_path):
    """A straight CLI run and one killed after 3 steps then resumed write equal students."""
    import hadref
    from hadref.data.text import TextSource
    from hadref.distill.lm_run import run_distill_lm

    settings = LMDistillSettings(gamma=0.5, stage3_steps=1, stage4_steps=1, sigma_batches=1,
                                 top_n=4, top_n_ratio=None, max_len=16, lr=1e-3, eval_windows=1)
    data = TextSource(texts=(str(lm_files / "train.txt"),))
    run_distill_lm(lm_files / "teacher.h5", settings, tmp_path / "a.h5", data=data,
                   progress=False, stage_files=False)

    def crash(step):
        if step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        run_distill_lm(lm_files / "teacher.h5", settings, tmp_path / "b.h5", data=data,
                       progress=False, checkpoint_every=0.0, on_step=crash, stage_files=False)
    assert (tmp_path / "b.ckpt.h5").exists()
    run_distill_lm(lm_files / "teacher.h5", settings, tmp_path / "b.h5", data=data,
                   progress=False, resume=True, stage_files=False)
    a, b = hadref.load(tmp_path / "a.h5"), hadref.load(tmp_path / "b.h5")
    assert _params_equal(a, b)
    np.testing.assert_array_equal(a.had["sigma_q"], b.had["sigma_q"])


def test_cli_bad_inputs(lm_files, tmp_path):
    from hadref.engine.bert import BertModel
    from hadref.engine.config import BertConfig
    from hadref.engine.io import save

    teacher, text = lm_files / "teacher.h5", lm_files / "train.txt"
    out = ["-o", tmp_path / "s.h5", "--quiet", "--max-len", "16"]
    error(run("distill", teacher, "--lm", "--task", "sst2", "--data-text", text, *out),
          "--task is an option of GLUE distillation")
    error(run("distill", teacher, "--data-text", text, *out), "--data-text is an option of --lm")
    error(run("distill", teacher, *out), "Missing option '--task'")
    error(run("distill", teacher, "--lm", *out), "needs text")
    error(run("distill", teacher, "--lm", "--data-text", tmp_path / "none.txt", *out),
          "--data-text: file not found")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01")
    error(run("distill", teacher, "--lm", "--data-text", tmp_path / "bin.txt", *out),
          "is not a text file")
    error(run("distill", teacher, "--lm", "--data-corpus", "nope", *out), "unknown corpus 'nope'")
    error(run("distill", teacher, "--lm", "--data-text", text, *out, "--max-len", "100"),
          "exceeds the teacher's context length")
    error(run("distill", teacher, "--lm", "--data-text", text, "--top-n-ratio", "2", *out),
          "--top-n-ratio")
    error(run("distill", teacher, "--lm", "--data-text", text, "--seed", "0,1", *out), "one seed")
    error(run("distill", teacher, "--lm", "--data-text", text, "--holdout", "1", *out),
          "--holdout")
    error(run("distill", teacher, "--lm", "--data-text", text, "--held-out-text", text, *out),
          "--held-out-text")
    enc = tmp_path / "enc.h5"
    save(BertModel.random(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=8,
                                     max_position_embeddings=16)), enc)
    error(run("distill", enc, "--lm", "--data-text", text, *out), "needs a decoder")
    assert not (tmp_path / "s.h5").exists()


def test_teacher_samples_and_mixed_sources(tmp_path):
    """--data-samples: full windows from BOS, deterministic per seed, appended to the text
    windows before the hold-out."""
    from hadref.data.text import teacher_samples

    model = _tiny_decoder()
    a = teacher_samples(model, 3, 10, seed=7)
    b = teacher_samples(model, 3, 10, seed=7)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.ids.shape == (3, 10) and a.mask.all() and (a.ids[:, 0] == 1).all()
    assert not np.array_equal(a.ids, teacher_samples(model, 3, 10, seed=8).ids)
    assert len({tuple(r) for r in a.ids}) == 3
    (tmp_path / "t.txt").write_text("hello world, " * 20)
    source = TextSource(texts=(str(tmp_path / "t.txt"),), samples=2, holdout=0.0)
    train, held, info = build_windows(source, model, 10, seed=7)
    assert len(held) == 0 and info["windows"] == len(train) == 2 + 26  # 259 bytes + eos: 26
    assert {tuple(r) for r in a.ids[:2]} <= {tuple(r) for r in train.ids}
    with pytest.raises(HadrefError, match="needs text"):
        build_windows(TextSource(), model, 10, 0)
