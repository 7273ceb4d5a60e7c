"""The GLUE table runner on a tiny model: recipe selection on held-out training rows,
the table's rows over seeds, resume by skipping finished runs, any GLUE task (STS-B's
regression and MRPC's F1 on generated files), bad options."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hadref.cli import main
from hadref.data import get_task, load_split
from hadref.distill import table as table_module
from hadref.distill.table import TableSpec, run_table, select_recipes, table_markdown
from hadref.errors import HadrefError
from hadref.train.finetune import FinetuneSettings
from hadref.train.jobs import DataSource, split_holdout

_FAST = {"gamma": 0.5, "stage3_steps": 2, "stage4_steps": 2, "sigma_batches": 2,
         "sigma_batch_size": 4}


def _spec(encoder, out, data_dir, tasks, **kw):
    return TableSpec(encoder=encoder, out=out, tasks=tasks, top_n=6, max_len=24,
                     finetune=FinetuneSettings(steps=3, batch_size=8),
                     data=DataSource(str(data_dir)), overrides=_FAST, **kw)


def _pair_task_files(root, folder, header, label, n_train=48, n_dev=12, seed=0):
    """A generated sentence-pair task in GLUE's column layout."""
    rng = np.random.default_rng(seed)
    words = "it 's a good bad movie film the and of".split()
    (root / folder).mkdir()
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["\t".join(header)]
        for i in range(n):
            a, b = (" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(2))
            rows.append(label(i, a, b))
        (root / folder / name).write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def mixed_glue(glue_slice, tmp_path_factory):
    """The SST-2 slice plus generated STS-B (regression) and MRPC (F1) files."""
    import shutil

    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(glue_slice / "SST-2", root / "SST-2")
    _pair_task_files(root, "STS-B", ["index", "genre", "filename", "year", "old_index",
                                     "source1", "source2", "sentence1", "sentence2", "score"],
                     lambda i, a, b: "\t".join([str(i), "g", "f", "y", "0", "s", "s", a, b,
                                                f"{(i * 7) % 50 / 10:.1f}"]))
    _pair_task_files(root, "MRPC", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                     lambda i, a, b: "\t".join([str(i % 2), "1", "2", a, b]))
    return root


def test_holdout_is_a_deterministic_partition(glue_slice):
    (train,) = load_split("sst2", "train", glue_slice)
    rest, held = split_holdout(train, 0.1, seed=0)
    assert len(held) == round(0.1 * len(train)) and len(rest) + len(held) == len(train)
    assert not set(rest.lines) & set(held.lines)
    again = split_holdout(train, 0.1, seed=0)[1]
    assert list(again.lines) == list(held.lines)
    assert list(split_holdout(train, 0.1, seed=1)[1].lines) != list(held.lines)
    with pytest.raises(HadrefError, match="--holdout"):
        DataSource(holdout=1.0)


def test_selection_uses_holdout_rows_and_the_table_resumes(glue_slice, encoder_file, tmp_path):
    out = tmp_path / "runs"
    spec = _spec(encoder_file, out, glue_slice, ["sst2"], seeds=[0, 1])
    with pytest.raises(HadrefError, match="no recipe chosen for sst2 yet"):
        run_table(spec, progress=False)
    chosen = select_recipes(spec, holdout=0.2, progress=False)["sst2"]
    assert chosen["chosen"] in ("paper", "slow-no-ste3")
    sel = json.loads((out / "sst2" / "selection.json").read_text())
    assert set(sel["holdout_metric"]) == {"paper", "slow-no-ste3"}
    # without teacher candidates: the one teacher of spec.finetune, the layout as before
    assert "teacher" not in sel and "teacher_candidates" not in sel
    assert not list((out / "sst2" / "select").glob("teacher-*"))
    teacher = json.loads((out / "sst2" / "select" / "teacher.json").read_text())
    assert teacher["data"]["holdout"] == 0.2  # trained without the held-out rows
    # the held-out rows (32 of 160) are what the selection evaluated, not dev (40 rows)
    record = json.loads((out / "sst2" / "select" / "paper.json").read_text())
    assert record["data"]["holdout"] == 0.2

    results = run_table(spec, progress=False)["sst2"]
    assert set(results["rows"]) == {"teacher", "binarized", "had", "paper", "no_ad", "no_tanh"}
    assert len(results["rows"]["had"]) == 2 and len(results["rows"]["teacher"]) == 1
    had = json.loads((out / "sst2" / "had-seed1.json").read_text())
    assert had["settings"]["seed"] == 1 and had["data"]["holdout"] == 0.0
    no_ad = json.loads((out / "sst2" / "no_ad-seed0.json").read_text())
    assert no_ad["settings"]["attn_loss"] is False
    table = (out / "table.md").read_text()
    assert "HAD student (chosen recipe)" in table and "+-" in table and "91.63" in table

    # a second call makes no run: every JSON is reused as it is
    stamps = {p: p.stat().st_mtime_ns for p in (out / "sst2").glob("*.json")}
    assert run_table(spec, progress=False)["sst2"]["rows"] == results["rows"]
    assert {p: p.stat().st_mtime_ns for p in (out / "sst2").glob("*.json")} == stamps


def test_any_task_regression_and_f1(mixed_glue, encoder_file, tmp_path):
    spec = _spec(encoder_file, tmp_path / "runs", mixed_glue, ["stsb", "mrpc"], seeds=[0],
                 rows=["teacher", "binarized", "had"], recipe="paper")
    results = run_table(spec, progress=False)
    assert results["stsb"]["metric"] == "pearson" and results["mrpc"]["metric"] == "f1"
    for task in ("stsb", "mrpc"):
        values = [v for row in results[task]["rows"].values() for v in row]
        assert all(np.isfinite(values)) and len(values) == 3
    text = table_markdown(results, spec)
    assert "STS-B (pearson)" in text and "MRPC (f1)" in text and get_task("mrpc").folder in text


def test_cli_runs_the_table_and_rejects_bad_options(glue_slice, encoder_file, tmp_path):
    def run(*args):
        return CliRunner().invoke(main, ["glue", str(encoder_file), "--data", str(glue_slice),
                                         "--out", str(tmp_path / "r"), "--quiet", *map(str, args)])

    r = run("--tasks", "sst2", "--seeds", "0", "--rows", "teacher", "--ft-epochs", "0.05",
            "--max-len", "24")
    assert r.exit_code == 0, r.output
    assert "teacher (float)" in r.output and "(1 seed)" in r.output
    for args, message in ((("--rows", "best"), "unknown row 'best'"),
                          (("--tasks", "nope"), "unknown GLUE task 'nope'"),
                          (("--seeds", "a"), "expected comma-separated integers >= 0"),
                          (("--recipes", "x", "--select"), "unknown recipe 'x'")):
        r = run(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output and message in r.output, r.output


def test_a_finished_run_of_other_settings_is_not_reported_as_this_one(glue_slice, encoder_file,
                                                                      tmp_path):
    # with --recipe paper the paper row is the run had-seed0; a later call with another
    # recipe (or other teacher settings) in the same folder must not report that file
    out = tmp_path / "runs"
    paper = _spec(encoder_file, out, glue_slice, ["sst2"], seeds=[0],
                  rows=["teacher", "paper"], recipe="paper")
    run_table(paper, progress=False)
    assert (out / "sst2" / "had-seed0.json").is_file()
    # (the test overrides make both recipes' settings equal, so N tells the runs apart)
    other = _spec(encoder_file, out, glue_slice, ["sst2"], seeds=[0],
                  rows=["teacher", "had"], recipe="slow-no-ste3")
    other.top_n = 7
    with pytest.raises(HadrefError, match="had-seed0.json: a finished run made with other settings"):
        run_table(other, progress=False)
    teacher = _spec(encoder_file, out, glue_slice, ["sst2"], seeds=[0], rows=["teacher"],
                    recipe="paper")
    teacher.finetune = FinetuneSettings(steps=4, batch_size=8)
    with pytest.raises(HadrefError, match="teacher.json: a finished run made with other settings"):
        run_table(teacher, progress=False)
    assert run_table(paper, progress=False)["sst2"]["rows"].keys() == {"teacher", "paper"}


def test_a_run_interrupted_before_its_first_checkpoint_starts_again(glue_slice, encoder_file,
                                                                    tmp_path):
    # killed before any checkpoint (or between the model file and its record): the run's
    # log and model file are left, with nothing to resume from; the next call redoes it
    out = tmp_path / "runs"
    spec = _spec(encoder_file, out, glue_slice, ["sst2"], seeds=[0], rows=["teacher", "paper"],
                 recipe="paper")
    first = run_table(spec, progress=False)["sst2"]["rows"]
    folder = out / "sst2"
    for name in ("teacher", "had-seed0"):
        assert (folder / f"{name}.log.jsonl").is_file() and (folder / f"{name}.h5").is_file()
        assert not (folder / f"{name}.ckpt.h5").exists()
        (folder / f"{name}.json").unlink()
    again = run_table(spec, progress=False)["sst2"]["rows"]
    assert again == first  # the same runs made again (deterministic), no "file exists" error
    assert all((folder / f"{name}.json").is_file() for name in ("teacher", "had-seed0"))


def _cli(glue_slice, encoder_file, out, *args):
    return CliRunner().invoke(main, ["glue", str(encoder_file), "--data", str(glue_slice),
                                     "--out", str(out), "--quiet", "--max-len", "24",
                                     *map(str, args)])


def _one_line_error(result, message):
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, \
        result.output


def test_teacher_candidates_are_chosen_on_held_out_rows(glue_slice, encoder_file, tmp_path,
                                                        monkeypatch):
    # real tiny fine-tunes, their held-out scores set by lr so that the choice is known:
    # 2e-4 and 1e-4 tie at the top, and the earlier of the two must win
    from hadref.train import jobs

    real, calls = jobs.run_finetune, []
    fake = {3e-5: 0.5, 2e-4: 0.7, 1e-4: 0.7}

    def run_finetune(model, task, settings, out, **kw):
        calls.append((settings.epochs, settings.lr, kw["data"].holdout))
        result = real(model, task, settings, out, **kw)
        if kw["data"].holdout:
            result["metrics"]["accuracy"] = fake[settings.lr]
        return result

    monkeypatch.setattr(jobs, "run_finetune", run_finetune)
    out = tmp_path / "runs"
    spec = _spec(encoder_file, out, glue_slice, ["sst2"], seeds=[0], rows=["teacher", "had"])
    candidates = [(0.05, 3e-5), (0.1, 2e-4), (0.05, 1e-4)]
    sel = select_recipes(spec, holdout=0.2, progress=False, teachers=candidates)["sst2"]
    assert sel == json.loads((out / "sst2" / "selection.json").read_text())
    assert sel["teacher"] == {"epochs": 0.1, "lr": 2e-4}
    assert sel["teacher_candidates"] == [{"epochs": e, "lr": lr, "holdout_metric": fake[lr]}
                                         for e, lr in candidates]
    assert sel["teacher_holdout_metric"] == 0.7 and sel["chosen"] in table_module.RECIPES
    select = out / "sst2" / "select"
    assert sorted(p.name for p in select.iterdir()) == [
        "teacher-e0.05-lr0.0001", "teacher-e0.05-lr3e-05", "teacher-e0.1-lr0.0002"]
    chosen = select / "teacher-e0.1-lr0.0002"
    teacher = json.loads((chosen / "teacher.json").read_text())
    assert teacher["settings"]["epochs"] == 0.1 and teacher["settings"]["lr"] == 2e-4
    assert teacher["settings"]["steps"] is None and teacher["data"]["holdout"] == 0.2
    # the recipes distilled the chosen teacher only, on the same rows
    assert {p.name for p in chosen.glob("*.h5")} == {"teacher.h5", "paper.h5",
                                                     "slow-no-ste3.h5"}
    assert json.loads((chosen / "paper.json").read_text())["data"]["holdout"] == 0.2
    assert not list((select / "teacher-e0.05-lr3e-05").glob("paper*"))

    # a second call reuses every finished run
    stamps = {p: p.stat().st_mtime_ns for p in select.rglob("*.json")}
    n_calls = len(calls)
    assert select_recipes(spec, holdout=0.2, progress=False, teachers=candidates)["sst2"][
        "teacher"] == sel["teacher"]
    assert len(calls) == n_calls and {p: p.stat().st_mtime_ns for p in select.rglob("*.json")} \
        == stamps
    # a selection without candidates in the same --out would drop the chosen teacher
    before = (out / "sst2" / "selection.json").read_bytes()
    with pytest.raises(HadrefError, match="its teacher was chosen among --ft-candidates"):
        select_recipes(spec, holdout=0.2, progress=False)
    assert (out / "sst2" / "selection.json").read_bytes() == before and len(calls) == n_calls

    # the table's teacher is the chosen one, on the whole training set
    results = run_table(spec, progress=False)["sst2"]
    assert set(results["rows"]) == {"teacher", "had"}
    table_teacher = json.loads((out / "sst2" / "teacher.json").read_text())
    assert table_teacher["settings"]["epochs"] == 0.1 and table_teacher["settings"]["lr"] == 2e-4
    assert table_teacher["data"]["holdout"] == 0.0 and calls[-1] == (0.1, 2e-4, 0.0)
    # given explicitly with the chosen values: the same teacher, reused
    spec.finetune = FinetuneSettings(epochs=0.1, lr=2e-4, batch_size=8)
    spec.ft_given = ("epochs", "lr")
    assert run_table(spec, progress=False)["sst2"]["rows"] == results["rows"]
    spec.finetune = FinetuneSettings(epochs=0.1, lr=3e-5, batch_size=8)
    with pytest.raises(HadrefError, match="selection.json: the chosen teacher has epochs 0.1, "
                                          "lr 0.0002, not --ft-lr 3e-05"):
        run_table(spec, progress=False)
    with pytest.raises(HadrefError, match="--ft-candidates: give the teacher's epochs and lr "
                                          "there, not also --ft-epochs and --ft-lr"):
        select_recipes(spec, holdout=0.2, progress=False, teachers=candidates)


def test_cli_uses_the_chosen_teacher_and_rejects_conflicts(glue_slice, encoder_file, tmp_path,
                                                           monkeypatch):
    # one command chooses the teacher and the recipe, the next makes the table with them
    monkeypatch.setitem(table_module.RECIPES, "paper", _FAST)   # a short distillation
    out = tmp_path / "cli"
    r = _cli(glue_slice, encoder_file, out, "--tasks", "sst2", "--select", "--recipes", "paper",
             "--holdout", "0.2", "--ft-candidates", "0.05:3e-5,0.1:1e-4")
    assert r.exit_code == 0, r.output
    assert "sst2: teacher teacher-e" in r.output and "sst2: recipe paper" in r.output
    sel = json.loads((out / "sst2" / "selection.json").read_text())
    assert [c["lr"] for c in sel["teacher_candidates"]] == [3e-5, 1e-4]
    r = _cli(glue_slice, encoder_file, out, "--tasks", "sst2", "--seeds", "0", "--rows", "teacher")
    assert r.exit_code == 0, r.output
    settings = json.loads((out / "sst2" / "teacher.json").read_text())["settings"]
    assert {"epochs": settings["epochs"], "lr": settings["lr"]} == sel["teacher"]

    # selection.json written by hand: the table reads only the chosen recipe and teacher
    out = tmp_path / "r"
    (out / "sst2").mkdir(parents=True)
    (out / "sst2" / "selection.json").write_text(json.dumps(
        {"chosen": "paper", "teacher": {"epochs": 0.05, "lr": 1e-4}}))
    r = _cli(glue_slice, encoder_file, out, "--tasks", "sst2", "--seeds", "0", "--rows",
             "teacher", "--ft-epochs", "0.1")
    _one_line_error(r, "selection.json: the chosen teacher has epochs 0.05, lr 0.0001, not "
                       "--ft-epochs 0.1")
    assert not (out / "sst2" / "teacher.json").exists()
    r = _cli(glue_slice, encoder_file, out, "--tasks", "sst2", "--seeds", "0", "--rows",
             "teacher", "--ft-epochs", "0.05")
    assert r.exit_code == 0, r.output
    settings = json.loads((out / "sst2" / "teacher.json").read_text())["settings"]
    assert (settings["epochs"], settings["lr"]) == (0.05, 1e-4)

    # an old selection.json (no teacher fields): --ft-* as given, their defaults otherwise
    old = tmp_path / "old"
    (old / "sst2").mkdir(parents=True)
    (old / "sst2" / "selection.json").write_text(json.dumps({"chosen": "paper"}))
    r = _cli(glue_slice, encoder_file, old, "--tasks", "sst2", "--seeds", "0", "--rows",
             "teacher", "--ft-epochs", "0.05")
    assert r.exit_code == 0, r.output
    settings = json.loads((old / "sst2" / "teacher.json").read_text())["settings"]
    assert (settings["epochs"], settings["lr"]) == (0.05, 3e-5)

    for args, message in (
            (("--select", "--ft-candidates", "2:3e-5,x"), "--ft-candidates: expected EPOCHS:LR"),
            (("--select", "--ft-candidates", "2"), "--ft-candidates: expected EPOCHS:LR"),
            (("--select", "--ft-candidates", "2:3e-5:1"), "--ft-candidates: expected EPOCHS:LR"),
            (("--select", "--ft-candidates", ","), "--ft-candidates: expected EPOCHS:LR"),
            (("--select", "--ft-candidates", "0:1e-4"), "epochs and lr must be positive"),
            (("--select", "--ft-candidates", "2:nan"), "epochs and lr must be positive"),
            (("--select", "--ft-candidates", "2:3e-5,2.0:0.00003"), "e2-lr3e-05 is given twice"),
            (("--select", "--ft-candidates", "2:3e-5", "--ft-lr", "1e-4"), "not also --ft-lr"),
            (("--ft-candidates", "2:3e-5"), "--ft-candidates: a choice for --select")):
        _one_line_error(_cli(glue_slice, encoder_file, tmp_path / "bad", "--tasks", "sst2",
                             *args), message)
    assert not (tmp_path / "bad").exists()


def test_the_paper_row_never_takes_the_chosen_recipes_name(glue_slice, encoder_file, tmp_path,
                                                           monkeypatch):
    # (the test overrides make the two recipes' settings equal: N tells them apart here)
    monkeypatch.setitem(table_module.RECIPES, "slow-no-ste3", {"top_n": 7})
    out = tmp_path / "runs"
    paper = _spec(encoder_file, out, glue_slice, ["sst2"], seeds=[0], rows=["teacher", "paper"])
    first = run_table(paper, progress=False)["sst2"]
    assert first["recipe"] is None   # not chosen yet: the paper run is paper-seed0
    assert (out / "sst2" / "paper-seed0.json").is_file()
    assert not (out / "sst2" / "had-seed0.json").exists()
    stamp = (out / "sst2" / "paper-seed0.json").stat().st_mtime_ns

    def chosen(recipe):
        (out / "sst2" / "selection.json").write_text(json.dumps({"chosen": recipe}))
        return _spec(encoder_file, out, glue_slice, ["sst2"], seeds=[0],
                     rows=["teacher", "had", "paper"])

    # chosen: the paper's recipe; the had row is the finished paper-seed0
    rows = run_table(chosen("paper"), progress=False)["sst2"]["rows"]
    assert rows["had"] == rows["paper"] == first["rows"]["paper"]
    assert not (out / "sst2" / "had-seed0.json").exists()
    # chosen: another recipe; its own had-seed0 beside the same paper-seed0
    rows = run_table(chosen("slow-no-ste3"), progress=False)["sst2"]["rows"]
    assert rows["paper"] == first["rows"]["paper"]
    assert json.loads((out / "sst2" / "had-seed0.json").read_text())["settings"]["top_n"] == 7
    assert (out / "sst2" / "paper-seed0.json").stat().st_mtime_ns == stamp
    # once the recipe is known the paper-only call resolves it and still reuses paper-seed0
    assert run_table(paper, progress=False)["sst2"]["rows"]["paper"] == first["rows"]["paper"]
