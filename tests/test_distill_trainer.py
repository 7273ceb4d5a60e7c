"""The distillation trainer on tiny random models (2 layers, hidden 32): every stage runs
and changes what it should, crash- and Ctrl-C-resume equal a straight run bit for bit,
ablations, regression, settings errors."""

import collections
import math
import os
import signal

import numpy as np
import pytest

from hadref.data import encode_split, get_task, load_split
from hadref.data.glue import Split
from hadref.distill.trainer import DistillSettings, distill
from hadref.engine.bert import BertModel
from hadref.engine.config import BertConfig
from hadref.engine.tokenizer import Tokenizer
from hadref.errors import HadrefError
from hadref.train.checkpoint import load_checkpoint, save_checkpoint
from hadref.train.finetune import FinetuneSettings, ensure_head, finetune


class _ListLog:
    def __init__(self):
        self.records = []

    def write(self, **record):
        self.records.append(record)


def _tiny_encoder(texts, tmp_path, seed=0):
    counts = collections.Counter(w for t in texts for w in t.split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in counts.most_common(300)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = BertModel.random(cfg, seed=seed)
    model.tokenizer = Tokenizer.from_vocab(tmp_path / "vocab.txt")
    return model


@pytest.fixture(scope="module")
def sst2_setup(glue_dir, tmp_path_factory):
    """A tiny teacher fine-tuned a few steps on 192 SST-2 rows, with train/dev sets."""
    task = get_task("sst2")
    (train,) = load_split(task, "train", glue_dir, limit=192)
    (dev,) = load_split(task, "dev", glue_dir, limit=48)
    model = _tiny_encoder(train.texts_a, tmp_path_factory.mktemp("tiny"))
    train_data = encode_split(train, model.tokenizer, 24)
    dev_data = encode_split(dev, model.tokenizer, 24)
    ensure_head(model, task)
    finetune(model, train_data, dev_data, task, FinetuneSettings(steps=6, batch_size=16, lr=1e-3))
    return task, model, train_data, dev_data


# gamma 0.5: stage 1 c = 5, 2.5, 1.25 (3 steps); stage 2 c = 1 ... 0.0625 (5 steps)
_FAST = dict(gamma=0.5, stage3_steps=2, stage4_steps=2, sigma_batches=3, top_n=6,
             max_len=24, lr=1e-3, lr_stage4=2e-4)


def _params_equal(a, b):
    return all(np.array_equal(a.params[n], b.params[n]) for n in a.params)


def test_stages_run_and_change_what_they_should(sst2_setup):
    task, teacher, train, dev = sst2_setup
    before = {n: v.copy() for n, v in teacher.params.items()}
    log, seen = _ListLog(), []
    student, stage_metrics = distill(teacher, train, dev, task, DistillSettings(**_FAST), log=log,
                                     on_step=lambda s: seen.append(s))
    assert seen == list(range(1, 13))
    steps = [r for r in log.records if "step" in r and "stage" in r and "event" not in r]
    assert [r["stage"] for r in steps] == [1] * 3 + [2] * 5 + [3] * 2 + [4] * 2
    # c decays by gamma every minibatch, restarting at c_mid = 1 in stage 2, none after
    assert [r["c"] for r in steps[:8]] == [5.0, 2.5, 1.25, 1.0, 0.5, 0.25, 0.125, 0.0625]
    assert all(r["c"] is None for r in steps[8:])
    # attention loss on in stages 1-3, off in stage 4 (and a lower learning rate there)
    assert all(r["l_attn"] is not None and r["l_attn"] > 0 for r in steps[:10])
    assert all(r["l_attn"] is None and r["lr"] == 2e-4 for r in steps[10:])
    assert all(np.isfinite(r["loss"]) for r in steps)
    # the teacher is untouched; every student weight matrix moved
    assert all(np.array_equal(before[n], teacher.params[n]) for n in before)
    moved = [n for n in student.params if not np.array_equal(student.params[n], teacher.params[n])]
    assert "encoder.layer.0.attention.self.query.weight" in moved and "classifier.weight" in moved
    # a hard-binarized dev evaluation of the binarized teacher (stage 0) and after each stage
    assert sorted(stage_metrics) == ["0", "1", "2", "3", "4"]
    evals = [r for r in log.records if r.get("event") == "eval"]
    assert [r["stage"] for r in evals] == [0, 1, 2, 3, 4]
    # each stage evaluation sees the live student: the last one equals a fresh evaluation of
    # the returned student, and changed_predictions counts the flips between stages
    from hadref.train.evaluation import evaluate
    _, final_preds = evaluate(student, dev, task)
    import hashlib
    assert evals[-1]["predictions_sha256"] == hashlib.sha256(final_preds.tobytes()).hexdigest()[:16]
    assert evals[0]["changed_predictions"] is None
    assert all(0 <= r["changed_predictions"] <= len(dev.labels) for r in evals[1:])
    assert student.had["stage"] == "4" and student.had["top_n"] == 6
    assert student.attention_core.transform == "hard" and student.attention_core.use_kernels
    np.testing.assert_array_equal(student.had["sigma_q"], student.attention_core.sigma_q.astype(np.float32))


def test_stage2_transform_approaches_sign(sst2_setup):
    """As c falls in stage 2 the student's logits approach the binarized (STE) ones."""
    from hadref.had.core import HADAttentionCore

    task, teacher, train, dev = sst2_setup
    model = teacher.copy()
    b = train.batch(np.arange(8))
    sq = sk = np.array([0.1, 0.1])
    gaps = []
    for c in (1.0, 0.25, 0.0625, 0.01):
        scores = {}
        for stage in ("tanh2", "ste"):
            model.attention_core = HADAttentionCore(sq, sk, 6, transform=stage, c=c)
            out = model.forward(b.input_ids, b.attention_mask, b.token_type_ids, output_scores=True)
            valid = b.attention_mask.astype(bool)
            # valid query rows and keys: (B, h, T, T) -> (B, T, h, T)[valid rows][..., valid keys]
            scores[stage] = [out.scores[0][i][:, valid[i]][:, :, valid[i]] for i in range(len(valid))]
        gaps.append(float(np.mean(np.concatenate(
            [np.abs(x - y).ravel() for x, y in zip(scores["tanh2"], scores["ste"])]))))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.2 * gaps[0]


def _crash_at(step_no):
    def on_step(step):
        if step == step_no:
            raise RuntimeError("simulated crash")
    return on_step


def test_crash_and_ctrl_c_resume_equal_straight_run(sst2_setup, tmp_path):
    task, teacher, train, dev = sst2_setup
    settings = DistillSettings(**_FAST)
    straight, straight_metrics = distill(teacher, train, dev, task, settings)

    ckpt = tmp_path / "crash.ckpt.h5"
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill(teacher, train, dev, task, settings, checkpoint_path=ckpt, checkpoint_every=0.0,
                on_step=_crash_at(5))
    resumed, resumed_metrics = distill(teacher, train, dev, task, settings, checkpoint_path=ckpt,
                                       resume=True)
    assert _params_equal(straight, resumed)
    assert resumed_metrics == straight_metrics

    # Ctrl-C: deferred to the end of the step, checkpointed, then KeyboardInterrupt
    ckpt2 = tmp_path / "sigint.ckpt.h5"

    def interrupt(step):
        if step == 9:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, train, dev, task, settings, checkpoint_path=ckpt2,
                checkpoint_every=1e9, on_step=interrupt)
    resumed2, _ = distill(teacher, train, dev, task, settings, checkpoint_path=ckpt2, resume=True)
    assert _params_equal(straight, resumed2)

    with pytest.raises(HadrefError, match="checkpoint made with top_n = 6, this run has 5"):
        distill(teacher, train, dev, task, DistillSettings(**{**_FAST, "top_n": 5}),
                checkpoint_path=ckpt, resume=True)

    # a checkpoint from before a setting existed resumes when the run keeps its default
    arrays, meta = load_checkpoint(ckpt)
    del meta["settings"]["attn_loss_stages"]
    save_checkpoint(ckpt, arrays, meta)
    resumed3, _ = distill(teacher, train, dev, task, settings, checkpoint_path=ckpt, resume=True)
    assert _params_equal(straight, resumed3)
    with pytest.raises(HadrefError, match=r"checkpoint made with attn_loss_stages = \[1, 2, 3\]"):
        distill(teacher, train, dev, task, DistillSettings(**{**_FAST, "attn_loss_stages": [1]}),
                checkpoint_path=ckpt, resume=True)


def test_finetune_eval_every_logs_dev_without_changing_training(sst2_setup):
    task, teacher, train, dev = sst2_setup
    settings = FinetuneSettings(steps=5, batch_size=8, lr=1e-3)
    a, b, log = teacher.copy(), teacher.copy(), _ListLog()
    finetune(a, train, dev, task, settings)
    finetune(b, train, dev, task, settings, eval_every=2, log=log)
    assert [r["step"] for r in log.records if r.get("event") == "eval"] == [2, 4, 5]
    assert _params_equal(a, b)   # evaluation draws nothing from the training generator


def test_finetune_resume_equals_straight_run(sst2_setup, tmp_path):
    task, teacher, train, dev = sst2_setup
    settings = FinetuneSettings(steps=6, batch_size=8, lr=1e-3, warmup_ratio=0.3)
    a, b = teacher.copy(), teacher.copy()
    finetune(a, train, dev, task, settings)
    ckpt = tmp_path / "ft.ckpt.h5"
    with pytest.raises(RuntimeError):
        finetune(b, train, dev, task, settings, checkpoint_path=ckpt, checkpoint_every=0.0,
                 on_step=_crash_at(4))
    c = teacher.copy()
    finetune(c, train, dev, task, settings, checkpoint_path=ckpt, resume=True)
    assert _params_equal(a, c)
    assert not _params_equal(a, teacher)


def test_ablations_no_attn_loss_and_no_tanh(sst2_setup):
    task, teacher, train, dev = sst2_setup
    log = _ListLog()
    distill(teacher, train, None, task, DistillSettings(**{**_FAST, "attn_loss": False}), log=log)
    steps = [r for r in log.records if "l_out" in r]
    assert len(steps) == 12 and all(r["l_attn"] is None for r in steps)

    log = _ListLog()   # attention loss in the tanh stages only: off from stage 3 on;
    # stage 3 at its own learning rate
    fast = {**_FAST, "attn_loss_stages": [1, 2], "lr_stage3": 1e-5}
    distill(teacher, train, None, task, DistillSettings(**fast), log=log)
    steps = [r for r in log.records if "l_out" in r]
    assert [r["l_attn"] is not None for r in steps] == [r["stage"] < 3 for r in steps]
    assert any(r["stage"] < 3 for r in steps) and any(r["stage"] == 3 for r in steps)
    lr_of = {1: fast["lr"], 2: fast["lr"], 3: 1e-5, 4: fast["lr_stage4"]}
    assert all(r["lr"] == lr_of[r["stage"]] for r in steps)

    settings = DistillSettings(**{**_FAST, "tanh": False})
    assert [s.transform for s in settings.make_schedule().stages] == ["ste"] * 4
    log = _ListLog()
    distill(teacher, train, None, task, settings, log=log)
    steps = [r for r in log.records if "l_out" in r]
    assert len(steps) == 12 and all(r["c"] is None for r in steps)
    assert all(r["l_attn"] is not None for r in steps[:10])


def test_regression_task_on_generated_data(tmp_path):
    """STS-B-like generated pairs: a 1-output head, MSE fine-tuning and MSE distillation."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    a = [" ".join(rng.choice(words, rng.integers(2, 8))) for _ in range(64)]
    b = [" ".join(rng.choice(words, rng.integers(2, 8))) for _ in range(64)]
    scores = rng.uniform(0, 5, 64).astype(np.float32)
    task = get_task("stsb")
    split = Split(task, tmp_path / "gen.tsv", a, b, scores, np.arange(64) + 2)
    model = _tiny_encoder(a + b, tmp_path, seed=1)
    data = encode_split(split, model.tokenizer, 24)
    ensure_head(model, task)
    assert model.num_labels == 1
    finetune(model, data, data, task, FinetuneSettings(steps=3, batch_size=16, lr=1e-3))
    log = _ListLog()
    student, metrics_ = distill(model, data, data, task, DistillSettings(**_FAST), log=log)
    assert set(metrics_["4"]) == {"pearson", "spearmanr"}
    steps = [r for r in log.records if "l_out" in r]
    assert all(np.isfinite(r["l_out"]) and r["l_out"] >= 0 for r in steps)


def test_settings_errors(sst2_setup):
    task, teacher, train, dev = sst2_setup
    for bad, pattern in (({"gamma": 1.5}, "--gamma"), ({"top_n_ratio": 2.0}, "--top-n-ratio"),
                         ({"c_mid": 9.0}, "c_start > c_mid"), ({"lr_stage4": 0.0}, "learning rates"),
                         ({"schedule": "slow"}, "--schedule")):
        with pytest.raises(HadrefError, match=pattern):
            distill(teacher, train, dev, task, DistillSettings(**{**_FAST, **bad}))
    assert DistillSettings(top_n_ratio=0.117, max_len=256).effective_top_n == 30
    with pytest.raises(HadrefError, match="needs 3"):
        distill(teacher, train, dev, get_task("mnli"), DistillSettings(**_FAST))
    assert math.isclose(DistillSettings().gamma, 0.9995)
