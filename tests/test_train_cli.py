"""`hadref finetune / distill / evaluate` end to end on a tiny model and an SST-2 slice:
the student file round-trips, --check agrees, a head-less encoder is fine-tuned first, and
bad data or settings give a one-line error with exit code 2."""

import json
import shutil

import numpy as np
import pytest
from cli_run import error as _error
from cli_run import ok as _ok
from cli_run import run as _run

import hadref

_DISTILL_FAST = ["--gamma", "0.5", "--stage3-steps", "2", "--stage4-steps", "2",
                 "--sigma-batches", "2", "--top-n", "6", "--max-len", "24", "--quiet"]




def test_finetune_distill_evaluate_round_trip(glue_slice, encoder_file, tmp_path):
    teacher = tmp_path / "teacher.h5"
    r = _ok(_run("finetune", encoder_file, "--task", "sst2", "--data", glue_slice, "-o", teacher,
                 "--steps", "4", "--batch-size", "16", "--max-len", "24", "--lr", "1e-3",
                 "--quiet", "--json"))
    ft = json.loads(r.output)
    assert ft["task"] == "sst2" and set(ft["metrics"]) == {"accuracy"}
    assert hadref.load(teacher).num_labels == 2
    assert not (tmp_path / "teacher.ckpt.h5").exists()  # removed once the run completed
    log = [json.loads(x) for x in (tmp_path / "teacher.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]

    student = tmp_path / "student.h5"
    r = _ok(_run("distill", teacher, "--task", "sst2", "--data", glue_slice, "-o", student,
                 *_DISTILL_FAST, "--json"))
    out = json.loads(r.output)
    assert sorted(out["stage_metrics"]) == ["0", "1", "2", "3", "4"]
    assert out["metrics"] == out["stage_metrics"]["4"] and out["top_n"] == 6

    # the student file: HAD metadata and a model whose forward is HAD attention
    model = hadref.load(student)
    assert model.had["top_n"] == 6 and model.had["stage"] == "4"
    assert model.had["settings"]["gamma"] == 0.5 and model.had["settings"]["max_len"] == 24
    assert len(model.had["teacher_sha256"]) == 64
    assert type(model.attention_core).__name__ == "HADAttentionCore"
    again = tmp_path / "again.h5"
    hadref.save(model, again)
    reloaded = hadref.load(again)
    assert all(np.array_equal(model.params[n], reloaded.params[n]) for n in model.params)
    np.testing.assert_array_equal(model.had["sigma_q"], reloaded.had["sigma_q"])

    r = _ok(_run("evaluate", student, "--task", "sst2", "--data", glue_slice, "--check", "--json"))
    ev = json.loads(r.output)
    assert ev["task"] == "sst2" and ev["had"] and ev["max_len"] == 24
    assert ev["metrics"]["accuracy"] == pytest.approx(out["metrics"]["accuracy"])
    assert ev["check"]["dev"]["agree"] and ev["examples"]["dev"] == 40
    r = _ok(_run("evaluate", teacher, "--task", "sst2", "--data", glue_slice))
    assert "float model" in r.output and "accuracy" in r.output
    _error(_run("evaluate", teacher, "--task", "sst2", "--data", glue_slice, "--check"),
           "--check compares the packed kernels")


def test_distill_fine_tunes_a_headless_encoder_first(glue_slice, encoder_file, tmp_path):
    student = tmp_path / "s.h5"
    _error(_run("distill", encoder_file, "--task", "sst2", "--data", glue_slice, "-o", student,
                "--no-finetune", *_DISTILL_FAST), "has no classifier head for sst2")
    r = _ok(_run("distill", encoder_file, "--task", "sst2", "--data", glue_slice, "-o", student,
                 "--ft-steps", "3", "--ft-batch-size", "16", "--no-attn-loss", *_DISTILL_FAST))
    assert "fine-tuning a teacher first" in r.output
    assert (tmp_path / "s-teacher.h5").is_file() and student.is_file()
    first = hadref.load(student)
    assert first.had["settings"]["attn_loss"] is False
    # --resume after the fine-tune finished reuses that teacher; the same seed gives the
    # same student, bit for bit
    r = _ok(_run("distill", encoder_file, "--task", "sst2", "--data", glue_slice, "-o", student,
                 "--ft-steps", "3", "--ft-batch-size", "16", "--no-attn-loss", *_DISTILL_FAST,
                 "--resume"))
    assert "using the teacher already fine-tuned" in r.output
    second = hadref.load(student)
    assert all(np.array_equal(first.params[n], second.params[n]) for n in first.params)


def test_bad_data_and_bad_settings(glue_slice, encoder_file, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    shutil.copytree(glue_slice, bad)
    with open(bad / "SST-2" / "train.tsv", "a", encoding="utf-8") as f:
        f.write("a row with\ttoo many\tfields\n")
    args = ["finetune", encoder_file, "--task", "sst2", "-o", tmp_path / "t.h5", "--steps", "1",
            "--max-len", "24", "--quiet"]
    _error(_run(*args, "--data", bad), "train.tsv:162: malformed sst2 row: expected 2 tab-separated")
    r = _ok(_run(*args, "--data", bad, "--skip-bad-rows"))
    assert "skipped 1 malformed row(s)" in r.output
    args[args.index(tmp_path / "t.h5")] = tmp_path / "t2.h5"   # t.h5 exists now

    _error(_run(*args, "--data", tmp_path / "nowhere"), "GLUE task folder not found")
    monkeypatch.delenv("HADREF_DATA", raising=False)
    _error(_run(*args), "pass --data DIR or set HADREF_DATA")
    monkeypatch.setenv("HADREF_DATA", str(glue_slice))
    _error(_run("finetune", encoder_file, "--task", "sst5"), "unknown GLUE task 'sst5'")
    _error(_run("finetune", tmp_path / "missing.h5", "--task", "sst2"), "model file not found")
    _error(_run(*args, "--max-len", "100"), "--max-len 100 exceeds the model's position table")
    distill = ["distill", tmp_path / "t.h5", "--task", "sst2", *_DISTILL_FAST]
    _error(_run(*distill, "--gamma", "1.5"), "--gamma must lie in (0, 1)")
    _error(_run(*distill, "--top-n-ratio", "3"), "--top-n-ratio must lie in (0, 1]")
    _error(_run(*distill, "--c-end", "2"), "c_start > c_mid > c_end")
    _error(_run(*distill, "--attn-loss-stages", "1,two"), "--attn-loss-stages: expected comma-separated")
    _error(_run(*distill, "--attn-loss-stages", "3,4"),
           "--attn-loss-stages: expected stage numbers among 1, 2, 3")
    _error(_run(*distill, "--lr-stage3", "-1e-5"), "learning rates must be positive")
    _error(_run(*distill, "--resume", "-o", tmp_path / "x.h5"), "no checkpoint to resume from")


def test_pair_task_mnli_generated(encoder_file, tmp_path):
    """A sentence-pair, 3-class task: finetune, then evaluate on matched and mismatched dev."""
    rng = np.random.default_rng(0)
    words = "it 's a good bad movie film the and of".split()
    labels = ["contradiction", "entailment", "neutral"]
    head = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2"]

    def rows(n, dev):
        out = []
        for i in range(n):
            a, b = (" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(2))
            gold = labels[i % 3]
            extra = [gold] * 5 if dev else [gold]
            out.append("\t".join([str(i), "0", "0", "g", "", "", "", "", a, b, *extra, gold]))
        return out

    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "train.tsv").write_text(
        "\n".join(["\t".join(head + ["label1", "gold_label"])] + rows(48, False)) + "\n")
    dev_head = "\t".join(head + [f"label{i}" for i in range(1, 6)] + ["gold_label"])
    for name, n in (("dev_matched.tsv", 9), ("dev_mismatched.tsv", 6)):
        (tmp_path / "MNLI" / name).write_text("\n".join([dev_head] + rows(n, True)) + "\n")
    teacher = tmp_path / "mnli.h5"
    _ok(_run("finetune", encoder_file, "--task", "mnli", "--data", tmp_path, "-o", teacher,
             "--steps", "2", "--batch-size", "8", "--max-len", "32", "--quiet"))
    assert hadref.load(teacher).num_labels == 3
    r = _ok(_run("evaluate", teacher, "--task", "mnli", "--data", tmp_path, "--json"))
    ev = json.loads(r.output)
    assert set(ev["metrics"]) == {"accuracy", "accuracy_mismatched"}
    assert ev["examples"] == {"matched": 9, "mismatched": 6}
