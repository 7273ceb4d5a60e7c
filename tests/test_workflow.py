"""The researcher's workflow (issue 16) on a tiny model and an SST-2 slice: provenance in
every file and `hadref info`, the head's task guard, evaluate at several N and the
binarized teacher, the plot, per-example predictions, GLUE test submissions, metrics JSON
beside every output, export to a Hugging Face folder and back, several seeds."""

import json
import shutil
import sys

import numpy as np
import pytest
from cli_run import error as _error
from cli_run import ok as _ok
from cli_run import run as _run

import hadref

_DISTILL_FAST = ["--gamma", "0.5", "--stage3-steps", "2", "--stage4-steps", "2",
                 "--sigma-batches", "2", "--top-n", "6", "--max-len", "24", "--quiet"]




@pytest.fixture(scope="module")
def models(glue_slice, encoder_file, tmp_path_factory):
    """(teacher, student) made by the CLI: the teacher on 96 training rows (a limit)."""
    folder = tmp_path_factory.mktemp("workflow")
    teacher = folder / "teacher.h5"
    _ok(_run("finetune", encoder_file, "--task", "sst2", "--data", glue_slice, "-o", teacher,
             "--steps", "3", "--batch-size", "16", "--max-len", "24", "--lr", "1e-3",
             "--train-limit", "96", "--seed", "5", "--quiet"))
    student = folder / "student.h5"
    _ok(_run("distill", teacher, "--task", "sst2", "--data", glue_slice, "-o", student,
             *_DISTILL_FAST))
    return teacher, student


def test_provenance_in_files_and_info(models, glue_slice, encoder_file):
    teacher, student = models
    prov = hadref.load(teacher).provenance
    assert prov["job"] == "finetune" and prov["task"] == "sst2" and prov["labels"] == ["0", "1"]
    assert prov["seeds"] == {"seed": 5} and prov["settings"]["seed"] == 5
    train, dev = prov["data"]
    assert train["split"] == "train" and train["rows"] == 96 and train["limit"] == 96
    assert dev["split"] == "dev" and dev["rows"] == 40 and dev["limit"] is None
    assert train["sha256"] == hadref.train.jobs.file_sha256(glue_slice / "SST-2" / "train.tsv")
    assert "finetune" in prov["command"] and "--train-limit" in prov["command"]
    assert prov["code"]["hadref"] == hadref.__version__
    assert prov["code"]["git_commit"] or "unknown" in prov["code"]["git"]
    assert prov["base"]["sha256"] == hadref.train.jobs.file_sha256(encoder_file)
    # the metrics beside the file, with the settings and the same provenance
    beside = json.loads(teacher.with_name("teacher.metrics.json").read_text())
    assert beside["sha256"] == hadref.train.jobs.file_sha256(teacher)
    assert set(beside["metrics"]) == {"accuracy"} and beside["settings"]["max_len"] == 24
    assert beside["provenance"] == prov

    s = hadref.load(student).provenance
    assert s["job"] == "distill" and s["task"] == "sst2"
    assert s["teacher"]["sha256"] == hadref.load(student).had["teacher_sha256"]
    assert s["teacher"]["sha256"] == hadref.train.jobs.file_sha256(teacher)
    assert s["teacher"]["provenance"] == prov and "accuracy" in s["teacher"]["metrics"]
    sm = json.loads(student.with_name("student.metrics.json").read_text())
    assert sorted(sm["stage_metrics"]) == ["0", "1", "2", "3", "4"] and sm["top_n"] == 6

    out = _ok(_run("info", teacher)).output
    assert "task        sst2 (head labels: 0, 1)" in out
    assert "train: " in out and "96 rows, limit 96" in out and "seeds       seed 5" in out
    assert "command     " in out and "--train-limit 96" in out
    out = _ok(_run("info", student)).output
    assert "teacher     " in out and s["teacher"]["sha256"][:16] in out
    # a file from before provenance: loads, and info says unknown
    assert hadref.load(encoder_file).provenance is None
    assert "provenance  unknown" in _ok(_run("info", encoder_file)).output


def test_a_head_scores_only_its_own_task(models, glue_slice, tmp_path):
    teacher, _ = models
    rng = np.random.default_rng(0)
    (tmp_path / "WNLI").mkdir()
    words = "it 's a good bad movie film the and of".split()
    rows = ["index\tsentence1\tsentence2\tlabel"] + [
        f"{i}\t{' '.join(rng.choice(words, 5))}\t{' '.join(rng.choice(words, 4))}\t{i % 2}"
        for i in range(12)]
    (tmp_path / "WNLI" / "dev.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "WNLI" / "train.tsv").write_text("\n".join(rows) + "\n")
    _error(_run("evaluate", teacher, "--task", "wnli", "--data", tmp_path),
           "its head was trained on sst2, not wnli (pass --any-task")
    r = _ok(_run("evaluate", teacher, "--task", "wnli", "--data", tmp_path, "--any-task", "--json"))
    assert json.loads(r.output)["examples"] == {"dev": 12}
    # a head of the wrong size is an error even with --any-task
    shutil.copytree(glue_slice / "SST-2", tmp_path / "MNLI")
    _error(_run("evaluate", teacher, "--task", "mnli", "--data", tmp_path, "--any-task"),
           "has a 2-output head, task mnli needs 3")
    # distilling a teacher for another task is refused too
    _error(_run("distill", teacher, "--task", "wnli", "--data", tmp_path, *_DISTILL_FAST,
                "-o", tmp_path / "x.h5"), "its head was trained on sst2")


def test_evaluate_at_several_n_binarized_teacher_and_plot(models, glue_slice, tmp_path):
    teacher, student = models
    res = tmp_path / "student-topn.json"
    r = _ok(_run("evaluate", student, "--task", "sst2", "--data", glue_slice,
                 "--top-n", "2,4,6,24", "--results", res, "--check"))
    assert "    N" in r.output and "accuracy" in r.output
    data = json.loads(res.read_text())
    assert data["top_ns"] == [2, 4, 6, 24] and sorted(data["by_top_n"], key=int) == ["2", "4", "6", "24"]
    assert data["top_n"] == 6 and data["metrics"] == data["by_top_n"]["6"]  # its own N
    assert set(data["check"]) == {"dev@2", "dev@4", "dev@6", "dev@24"}
    assert data["reference"] == hadref.load(student).provenance["teacher"]["metrics"]
    assert data["settings"]["top_n"] == [2, 4, 6, 24] and data["provenance"]["job"] == "distill"
    single = json.loads(_ok(_run("evaluate", student, "--task", "sst2", "--data", glue_slice,
                                 "--json")).output)
    assert single["metrics"] == data["by_top_n"]["6"]
    # N at least the sequence length keeps every key: the same as the largest N
    long = json.loads(_ok(_run("evaluate", student, "--task", "sst2", "--data", glue_slice,
                               "--top-n", "64", "--json")).output)
    assert long["metrics"] == data["by_top_n"]["24"]

    bin_res = tmp_path / "bin.json"
    r = _ok(_run("evaluate", teacher, "--task", "sst2", "--data", glue_slice, "--binarize",
                 "--top-n", "2,6", "--sigma-batches", "2", "--results", bin_res))
    assert "hard-binarized, no distillation" in r.output and "teacher (float)" in r.output
    b = json.loads(bin_res.read_text())
    assert b["binarized"] and list(b["by_top_n"]) == ["2", "6"] and len(b["sigma_q"]) == 2
    assert b["max_len"] == 24    # the teacher's training length, from its provenance
    float_eval = json.loads(_ok(_run("evaluate", teacher, "--task", "sst2", "--data", glue_slice,
                                     "--json")).output)
    assert float_eval["max_len"] == 24
    assert b["reference"] == float_eval["metrics"]
    # the binarized teacher at the student's N with the student's sigma estimate settings is
    # the distillation run's stage-0 number
    stage0 = json.loads(student.with_name("student.metrics.json").read_text())["stage_metrics"]["0"]
    assert b["by_top_n"]["6"] == stage0
    _error(_run("evaluate", teacher, "--task", "sst2", "--data", glue_slice, "--top-n", "4"),
           "--top-n scores HAD attention")
    _error(_run("evaluate", student, "--task", "sst2", "--data", glue_slice, "--binarize"),
           "already a HAD student")
    _error(_run("evaluate", student, "--task", "sst2", "--data", glue_slice, "--top-n", "4,x"),
           "--top-n: expected comma-separated integers")

    pytest.importorskip("matplotlib")
    fig = tmp_path / "topn.png"
    _ok(_run("plot", "topn", res, bin_res, "-o", fig))
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _error(_run("plot", "topn", res, "-o", fig), "file exists; pass --overwrite")
    _error(_run("plot", "topn", teacher.with_name("teacher.metrics.json"), "-o", fig,
                "--overwrite"), "no by_top_n field")


def test_plot_without_matplotlib_says_so(tmp_path, monkeypatch):
    res = tmp_path / "r.json"
    res.write_text(json.dumps({"task": "sst2", "by_top_n": {"4": {"accuracy": 0.5}}}))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    _error(_run("plot", "topn", res, "-o", tmp_path / "f.png"),
           "needs matplotlib (pip install 'hadref[plot]')")


def test_predictions_file(models, glue_slice, tmp_path):
    _, student = models
    path = tmp_path / "preds.tsv"
    r = _ok(_run("evaluate", student, "--task", "sst2", "--data", glue_slice,
                 "--predictions", path, "--json"))
    ev = json.loads(r.output)
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tlabel\tprediction\tp_0\tp_1" and len(lines) == 41
    rows = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in rows] == [str(i) for i in range(40)]
    gold = [line.split("\t")[1] for line in
            (glue_slice / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    assert [row[1] for row in rows] == gold
    probs = np.array([[float(row[3]), float(row[4])] for row in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [row[2] for row in rows] == [str(int(p[1] > p[0])) for p in probs]
    accuracy = np.mean([row[1] == row[2] for row in rows])
    assert accuracy == pytest.approx(ev["metrics"]["accuracy"])
    beside = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert beside["metrics"] == ev["metrics"] and beside["files"] == [str(path)]
    _error(_run("evaluate", student, "--task", "sst2", "--data", glue_slice, "--top-n", "2,4",
                "--predictions", path), "give one --top-n value")
    # an existing predictions or results file is never replaced silently, and never the model
    before = path.read_text()
    _error(_run("evaluate", student, "--task", "sst2", "--data", glue_slice, "--predictions", path),
           "--predictions " + str(path) + ": file exists; pass --overwrite")
    _error(_run("evaluate", student, "--task", "sst2", "--data", glue_slice, "--predictions",
                tmp_path / "other.tsv", "--results", tmp_path / "preds.metrics.json"),
           "preds.metrics.json: file exists")
    assert path.read_text() == before and not (tmp_path / "other.tsv").exists()
    _error(_run("evaluate", student, "--task", "sst2", "--data", glue_slice, "--results", student),
           "same file")
    _ok(_run("evaluate", student, "--task", "sst2", "--data", glue_slice, "--predictions", path,
             "--overwrite"))


def test_glue_test_submission_sst2_and_mnli(models, glue_slice, encoder_file, tmp_path):
    _, student = models
    data = tmp_path / "glue"
    shutil.copytree(glue_slice, data)
    dev = (glue_slice / "SST-2" / "dev.tsv").read_text().splitlines()[1:13]
    (data / "SST-2" / "test.tsv").write_text(
        "index\tsentence\n" + "".join(f"{100 + i}\t{row.split(chr(9))[0]}\n"
                                      for i, row in enumerate(dev)))
    sub = tmp_path / "submission"
    _error(_run("evaluate", student, "--task", "sst2", "--data", data, "--split", "test"),
           "give --submission DIR")
    r = _ok(_run("evaluate", student, "--task", "sst2", "--data", data, "--split", "test",
                 "--submission", sub, "--predictions", tmp_path / "test-preds.tsv"))
    assert "12 examples predicted" in r.output
    lines = (sub / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13
    assert [x.split("\t")[0] for x in lines[1:]] == [str(100 + i) for i in range(12)]
    assert {x.split("\t")[1] for x in lines[1:]} <= {"0", "1"}
    preds = (tmp_path / "test-preds.tsv").read_text().splitlines()
    assert preds[0] == "index\tprediction\tp_0\tp_1"   # no label column on test
    assert [p.split("\t")[1] for p in preds[1:]] == [x.split("\t")[1] for x in lines[1:]]
    meta = json.loads((tmp_path / "test-preds.metrics.json").read_text())
    assert meta["split"] == "test" and meta["metrics"] == {} and meta["examples"] == {"test": 12}

    # MNLI: matched and mismatched test files -> MNLI-m.tsv and MNLI-mm.tsv with label names
    rng = np.random.default_rng(1)
    words = "it 's a good bad movie film the and of".split()
    labels = ["contradiction", "entailment", "neutral"]
    head = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1",
            "sentence2"]

    def rows(n, tail):
        return ["\t".join([str(i), "0", "0", "g", "", "", "", "",
                           " ".join(rng.choice(words, 4)), " ".join(rng.choice(words, 3))]
                          + tail(i)) for i in range(n)]

    (data / "MNLI").mkdir()
    (data / "MNLI" / "train.tsv").write_text("\n".join(
        ["\t".join(head + ["label1", "gold_label"])] + rows(24, lambda i: [labels[i % 3]] * 2)) + "\n")
    dev_head = "\t".join(head + [f"label{i}" for i in range(1, 6)] + ["gold_label"])
    for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
        dev_rows = rows(5, lambda i: [labels[i % 3]] * 6)
        (data / "MNLI" / name).write_text("\n".join([dev_head] + dev_rows) + "\n")
    for name, n in (("test_matched.tsv", 7), ("test_mismatched.tsv", 4)):
        (data / "MNLI" / name).write_text("\n".join(["\t".join(head)] + rows(n, lambda i: [])) + "\n")
    mnli = tmp_path / "mnli.h5"
    _ok(_run("finetune", encoder_file, "--task", "mnli", "--data", data, "-o", mnli,
             "--steps", "2", "--batch-size", "8", "--max-len", "32", "--quiet"))
    _ok(_run("evaluate", mnli, "--task", "mnli", "--data", data, "--split", "test",
             "--submission", sub))
    for name, n in (("MNLI-m.tsv", 7), ("MNLI-mm.tsv", 4)):
        lines = (sub / name).read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == n + 1
        assert {x.split("\t")[1] for x in lines[1:]} <= set(labels)
    r = _ok(_run("evaluate", mnli, "--task", "mnli", "--data", data, "--predictions",
                 tmp_path / "mnli.tsv"))
    assert (tmp_path / "mnli-matched.tsv").is_file() and (tmp_path / "mnli-mismatched.tsv").is_file()


def test_export_minilm_matches_the_manifest_and_round_trips(minilm_h5, shared_dir, tmp_path):
    from safetensors import safe_open

    manifest = (shared_dir / "fixtures" / "weights_manifest.txt").read_text().split("\n")
    expected = {}
    for line in filter(None, manifest):
        name, dtype, shape = line.split("\t")
        expected[name] = (dtype, json.loads(shape))
    out = tmp_path / "hf"
    _ok(_run("export", minilm_h5, "-o", out))
    header_len = int.from_bytes((out / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((out / "model.safetensors").read_bytes()[8:8 + header_len])
    header.pop("__metadata__", None)
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items()} == expected
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["architectures"] == ["BertModel"]
    assert "had" not in cfg and (out / "tokenizer.json").is_file()
    back = tmp_path / "back.h5"
    _ok(_run("convert", out, "-o", back))
    a, b = hadref.load(minilm_h5), hadref.load(back)
    assert a.config == b.config and sorted(a.params) == sorted(b.params)
    assert all(np.array_equal(a.params[n], b.params[n]) for n in a.params)
    assert a.tokenizer.json == b.tokenizer.json
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("embeddings.word_embeddings.weight"),
                                      a.params["embeddings.word_embeddings.weight"])
    _error(_run("export", minilm_h5, "-o", out), "exists and is not an empty folder")


def test_export_student_keeps_had_and_labels(models, tmp_path):
    _, student = models
    out = tmp_path / "hf-student"
    r = _ok(_run("export", student, "-o", out))
    assert "HAD student, N = 6" in r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {"0": "0", "1": "1"} and cfg["label2id"] == {"0": 0, "1": 1}
    assert cfg["finetuning_task"] == "sst2" and cfg["architectures"] == ["BertForSequenceClassification"]
    model = hadref.load(student)
    had = cfg["had"]
    assert had["top_n"] == 6 and "sign(0) = +1" in had["binarization"]
    assert had["sigma_q"] == model.had["sigma_q"].tolist() and len(had["sigma_k"]) == 2
    assert cfg["hadref_provenance"] == model.provenance
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        names = set(f.keys())
    assert "classifier.weight" in names and "bert.pooler.dense.weight" in names
    back = tmp_path / "back.h5"
    _ok(_run("convert", out, "-o", back))
    again = hadref.load(back)
    assert all(np.array_equal(model.params[n], again.params[n]) for n in model.params)
    np.testing.assert_array_equal(model.had["sigma_q"], again.had["sigma_q"])
    np.testing.assert_array_equal(model.had["sigma_k"], again.had["sigma_k"])
    assert again.had["top_n"] == 6 and again.provenance == model.provenance
    assert type(again.attention_core).__name__ == "HADAttentionCore"


def test_several_seeds_and_their_summary(glue_slice, encoder_file, tmp_path):
    out = tmp_path / "t.h5"
    args = ["finetune", encoder_file, "--task", "sst2", "--data", glue_slice, "-o", out,
            "--steps", "2", "--batch-size", "16", "--max-len", "24", "--lr", "1e-3", "--quiet"]
    r = _ok(_run(*args, "--seed", "0,1,2"))
    assert "dev over seeds: accuracy" in r.output and "mean +- sample std, n = 3" in r.output
    summary = json.loads((tmp_path / "t-seeds.json").read_text())
    accs = [run["metrics"]["accuracy"] for run in summary["runs"]]
    assert summary["seeds"] == [0, 1, 2] and len(accs) == 3
    assert summary["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert summary["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    for s in (0, 1, 2):
        assert hadref.load(tmp_path / f"t-seed{s}.h5").provenance["seeds"] == {"seed": s}
    # --resume reuses finished seeds
    r = _ok(_run(*args, "--seed", "0,1,2", "--resume"))
    assert "seed 1: reusing" in r.output
    assert json.loads((tmp_path / "t-seeds.json").read_text())["mean"] == summary["mean"]
    _error(_run(*args, "--seed", "0,0"), "expected distinct integers such as 0,1,2")
    _error(_run(*args, "--seed", "0,1", "--log", tmp_path / "l.jsonl"),
           "--log and --checkpoint name one run's files")


def test_export_names_the_labels_of_a_file_without_provenance(models, tmp_path):
    teacher, _ = models
    model = hadref.load(teacher)
    model.provenance = None          # as a file from before provenance
    old = hadref.save(model, tmp_path / "old.h5")
    _ok(_run("export", old, "-o", tmp_path / "a"))
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"} and "finetuning_task" not in cfg
    _ok(_run("export", old, "-o", tmp_path / "b", "--task", "sst2"))
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "0", "1": "1"} and cfg["finetuning_task"] == "sst2"
    _error(_run("export", old, "-o", tmp_path / "c", "--task", "mnli"), "needs a 3-output head")
    _error(_run("export", teacher, "-o", tmp_path / "d", "--task", "rte"),
           "the file's head was trained on sst2")
