"""Bad input through the CLI, one table (issue 18): every class of bad input ends in its one-line
message (exact text), exit code 2, no traceback, and leaves every file as it was (sha256 of
each file in the workspace before and after; nothing new except empty folders).

Each case gets a fresh workspace ``ws``: ``model.h5`` (the tiny encoder), ``teacher.h5`` (a
copy of it, the input of distill), ``data/`` (the SST-2 slice), and whatever the case adds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import hadref
from hadref.cli import main
from hadref.errors import HadrefError

_FT = ["--task", "sst2", "--steps", "2", "--batch-size", "16", "--max-len", "24", "--quiet"]
_DI = ["--task", "sst2", "--max-len", "24", "--quiet"]


class Workspace:
    def __init__(self, root: Path, glue_slice: Path, encoder_file: Path):
        self.root = root
        self.model = root / "model.h5"
        self.teacher = root / "teacher.h5"
        self.data = root / "data"
        shutil.copy(encoder_file, self.model)
        shutil.copy(encoder_file, self.teacher)
        shutil.copytree(glue_slice, self.data)
        self.vocab = encoder_file.parent / "vocab.txt"   # the encoder's WordPiece vocabulary

    def __truediv__(self, name):
        return self.root / name

    def finetune(self, *args):
        return ["finetune", self.model, *_FT, "--data", self.data, *args]

    def distill(self, *args):
        return ["distill", self.teacher, *_DI, "--data", self.data, *args]

    def edit_model(self, name, edit) -> Path:
        """A copy of model.h5 called ``name``, changed by ``edit(h5py.File)``."""
        path = self.root / name
        shutil.copy(self.model, path)
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    def snapshot(self) -> dict:
        return {str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.root.rglob("*")) if p.is_file()}


# --- setups: each returns (CLI arguments, the expected last line of output) ---------------

def _same_as_input(ws):
    return ws.finetune("-o", ws.model), (
        f"hadref: error: -o and MODEL.h5 are the same file ({ws.model}): a command never "
        "writes over its input; choose another -o")


def _same_through_dot(ws):
    os.chdir(ws.root)
    return ["distill", "teacher.h5", *_DI, "--data", ws.data, "-o", "./teacher.h5"], (
        "hadref: error: -o and TEACHER.h5 are the same file (teacher.h5): a command never "
        "writes over its input; choose another -o")


def _same_through_symlink(ws):
    (ws / "link.h5").symlink_to(ws.teacher)
    return ws.distill("-o", ws / "link.h5"), (
        f"hadref: error: -o and TEACHER.h5 are the same file ({ws / 'link.h5'}): a command "
        "never writes over its input; choose another -o")


def _same_through_hard_link(ws):
    os.link(ws.teacher, ws / "hard.h5")
    return ws.distill("-o", ws / "hard.h5"), (
        f"hadref: error: -o and TEACHER.h5 are the same file ({ws / 'hard.h5'}): a command "
        "never writes over its input; choose another -o")


def _log_is_teacher(ws):
    return ws.distill("--log", ws.teacher), (
        f"hadref: error: --log and TEACHER.h5 are the same file ({ws.teacher}): a command "
        "never writes over its input; choose another --log")


def _checkpoint_is_teacher(ws):
    return ws.distill("--checkpoint", ws.teacher), (
        f"hadref: error: --checkpoint and TEACHER.h5 are the same file ({ws.teacher}): a "
        "command never writes over its input; choose another --checkpoint")


def _checkpoint_is_output(ws):
    return ws.distill("-o", ws / "s.h5", "--checkpoint", ws / "s.h5"), (
        f"hadref: error: -o and --checkpoint are the same file ({ws / 's.h5'}): every file a "
        "run writes needs its own name; choose another --checkpoint")


def _log_is_checkpoint(ws):
    return ws.finetune("-o", ws / "t.h5", "--log", ws / "x", "--checkpoint", ws / "x"), (
        f"hadref: error: --log and --checkpoint are the same file ({ws / 'x'}): every file a "
        "run writes needs its own name; choose another --checkpoint")


def _log_is_the_fine_tuned_teacher(ws):
    return ws.distill("-o", ws / "s.h5", "--log", ws / "s-teacher.h5"), (
        f"hadref: error: fine-tuned teacher -o and --log are the same file "
        f"({ws / 's-teacher.h5'}): every file a run writes needs its own name; choose another --log")


def _output_exists(ws):
    (ws / "t.h5").write_bytes(b"an earlier result")
    return ws.finetune("-o", ws / "t.h5"), (
        f"hadref: error: -o {ws / 't.h5'}: file exists; pass --overwrite to replace it, or "
        "choose another -o")


def _checkpoint_exists(ws):
    (ws / "t.ckpt.h5").write_bytes(b"an unfinished run")
    return ws.finetune("-o", ws / "t.h5"), (
        f"hadref: error: --checkpoint {ws / 't.ckpt.h5'}: file exists; pass --resume to "
        "continue its run, or --overwrite to start again")


def _log_exists(ws):
    (ws / "t.log.jsonl").write_text("{}\n")
    return ws.finetune("-o", ws / "t.h5"), (
        f"hadref: error: --log {ws / 't.log.jsonl'}: file exists; pass --overwrite to "
        "replace it (--resume appends to it)")


def _fine_tuned_teacher_exists(ws):
    (ws / "s-teacher.h5").write_bytes(b"a teacher of an earlier run")
    return ws.distill("-o", ws / "s.h5"), (
        f"hadref: error: fine-tuned teacher -o {ws / 's-teacher.h5'}: file exists; pass "
        "--overwrite to replace it, or choose another -o")


def _convert_output_exists(ws):
    folder = _hf_folder(ws)
    (ws / "c.h5").write_bytes(b"an earlier conversion")
    return ["convert", folder, "-o", ws / "c.h5"], (
        f"hadref: error: -o {ws / 'c.h5'}: file exists; pass --overwrite to replace it, or "
        "choose another -o")


def _convert_onto_its_source(ws):
    folder = _hf_folder(ws)
    return ["convert", folder / "model.safetensors", "-o", folder / "model.safetensors"], (
        f"hadref: error: -o and SRC are the same file ({folder / 'model.safetensors'}): a "
        "command never writes over its input; choose another -o")


def _convert_onto_its_config(ws):
    folder = _hf_folder(ws)
    return ["convert", folder, "-o", folder / "config.json"], (
        f"hadref: error: -o and SRC's config.json are the same file ({folder / 'config.json'}): "
        "a command never writes over its input; choose another -o")


def _convert_lone_safetensors_without_heads(ws):
    folder = _hf_folder(ws)
    (folder / "config.json").unlink()
    return ["convert", folder / "model.safetensors", "-o", ws / "c.h5"], (
        f"hadref: error: {folder / 'model.safetensors'}: no config.json beside it to give the "
        "number of attention heads: pass --heads N (N divides the hidden size 32)")


def _bench_plot_exists(ws):
    (ws / "p.png").write_bytes(b"an earlier plot")
    return ["bench", "--seq", "16", "--heads", "1", "--repeat", "1", "--quiet",
            "--plot", ws / "p.png"], (
        f"hadref: error: --plot {ws / 'p.png'}: file exists; pass --overwrite to replace it, "
        "or choose another --plot")


def _folder_is_a_file(ws):
    (ws / "notes").write_text("a file, not a folder")
    return ws.finetune("-o", ws / "notes" / "t.h5"), (
        f"hadref: error: -o: {ws / 'notes'} is not a folder")


def _folder_read_only(ws):
    (ws / "ro").mkdir()
    (ws / "ro").chmod(0o555)
    if os.geteuid() == 0:   # root writes anywhere: the folder refuses the probe file instead
        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if Path(dir) == ws / "ro":
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)
        ws.monkeypatch.setattr("hadref.files.tempfile.mkstemp", refuse)
    return ws.finetune("-o", ws / "ro" / "t.h5"), (
        f"hadref: error: -o: cannot write in the folder {ws / 'ro'}: Permission denied")


def _model_lacks_a_parameter(ws):
    path = ws.edit_model("m.h5", lambda f: f["params"].pop("encoder.layer.1.output.dense.bias"))
    return ["info", path], f"hadref: error: {path}: missing dataset params/encoder.layer.1.output.dense.bias"


def _model_wrong_shape(ws):
    def edit(f):
        del f["params/encoder.layer.0.attention.self.query.weight"]
        f["params/encoder.layer.0.attention.self.query.weight"] = np.zeros((32, 31), np.float32)
    path = ws.edit_model("m.h5", edit)
    return ["info", path], (f"hadref: error: {path}: dataset params/encoder.layer.0.attention."
                            "self.query.weight has shape (32, 31), the config expects (32, 32)")


def _model_not_finite(ws):
    def edit(f):
        f["params/embeddings.LayerNorm.weight"][3] = np.nan
    path = ws.edit_model("m.h5", edit)
    return ["info", path], (f"hadref: error: {path}: dataset params/embeddings.LayerNorm.weight "
                            "holds non-finite values")


def _model_tokenizer_beyond_embeddings(ws):
    import json

    def edit(f):
        config = json.loads(f.attrs["config"])
        config["vocab_size"] = 100
        f.attrs["config"] = json.dumps(config)
        table = f["params/embeddings.word_embeddings.weight"][:100]
        del f["params/embeddings.word_embeddings.weight"]
        f["params/embeddings.word_embeddings.weight"] = table
    path = ws.edit_model("m.h5", edit)
    n = hadref.load(ws.model).tokenizer.id_limit
    return ["info", path], (f"hadref: error: {path}: dataset tokenizer.json: the tokenizer has ids "
                            f"up to {n - 1}, the embedding table only 100 rows (vocab_size)")


def _model_config_out_of_range(ws):
    import json

    def edit(f):
        f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), "num_hidden_layers": -1})
    path = ws.edit_model("m.h5", edit)
    return ["info", path], (f"hadref: error: {path}: attribute config: field num_hidden_layers "
                            "must be a positive integer, got -1")


def _had_metadata(**attrs):
    def edit(f):
        g = f.create_group("had")
        g["sigma_q"] = np.ones(2, np.float32)
        g["sigma_k"] = np.ones(2, np.float32)
        g.attrs.update({"top_n": 4, "ste_t": 1.0, "stage": "4", **attrs})
    return edit


def _had_top_n_not_a_number(ws):
    path = ws.edit_model("m.h5", _had_metadata(top_n="thirty"))
    return ["info", path], (f"hadref: error: {path}: group had: top_n must be a positive "
                            "integer, got 'thirty'")


def _had_ste_t_not_a_number(ws):
    path = ws.edit_model("m.h5", _had_metadata(ste_t="wide"))
    return ["info", path], (f"hadref: error: {path}: group had: ste_t must be a positive finite "
                            "number, got 'wide'")


def _checkpoint_meta_not_json(ws):
    with h5py.File(ws / "t.ckpt.h5", "w") as f:
        f.attrs["format"] = "hadref-checkpoint-1"
        f.attrs["meta"] = "{not json"
    return ws.finetune("-o", ws / "t.h5", "--resume"), (
        f"hadref: error: {ws / 't.ckpt.h5'}: checkpoint attribute meta is missing or not JSON")


def _checkpoint_meta_missing_field(ws):
    from hadref.train.checkpoint import save_checkpoint

    save_checkpoint(ws / "t.ckpt.h5", {"params": {}}, {"step": 1})
    return ws.finetune("-o", ws / "t.h5", "--resume"), (
        f"hadref: error: {ws / 't.ckpt.h5'}: checkpoint meta field 'kind' should be a string, "
        "got None")


def _resume_with_another_train_limit(ws):
    _interrupted_finetune(ws, train_limit=100)
    return ws.finetune("-o", ws / "t.h5", "--resume", "--train-limit", "50"), (
        f"hadref: error: {ws / 't.ckpt.h5'}: checkpoint made with train_limit = 100, this run "
        "has 50: resume with the same settings")


def _resume_with_another_dev_limit(ws):
    _interrupted_finetune(ws, train_limit=100)
    return ws.finetune("-o", ws / "t.h5", "--resume", "--train-limit", "100",
                       "--dev-limit", "10"), (
        f"hadref: error: {ws / 't.ckpt.h5'}: checkpoint made with dev_limit = None, this run "
        "has 10: resume with the same settings")


def _data_header_only(ws):
    (ws.data / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
    return ws.finetune("-o", ws / "t.h5"), (
        f"hadref: error: {ws.data / 'SST-2' / 'dev.tsv'}: a header and no data rows: a GLUE file "
        "needs at least one row")


def _data_nul_byte(ws):
    _edit_line(ws.data / "SST-2" / "train.tsv", 5, lambda line: "a\0" + line)
    return ws.finetune("-o", ws / "t.h5"), (
        f"hadref: error: {ws.data / 'SST-2' / 'train.tsv'}:5: malformed sst2 row: NUL byte in "
        "field 1 (fix the file or pass --skip-bad-rows)")


def _data_unknown_label(ws):
    _edit_line(ws.data / "SST-2" / "dev.tsv", 3, lambda line: line.rsplit("\t", 1)[0] + "\t7\n")
    return ws.finetune("-o", ws / "t.h5"), (
        f"hadref: error: {ws.data / 'SST-2' / 'dev.tsv'}:3: malformed sst2 row: unknown label "
        "'7', expected one of 0, 1 (fix the file or pass --skip-bad-rows)")


def _seed_negative(ws):
    return ws.finetune("-o", ws / "t.h5", "--seed", "-1"), (
        "Error: Invalid value for '--seed': -1 is not in the range x>=0.")


def _bench_seed_negative(ws):
    return ["bench", "--seq", "16", "--seed", "-1"], (
        "Error: Invalid value for '--seed': -1 is not in the range x>=0.")


def _lr_nan(ws):
    return ws.distill("--lr", "nan"), "Error: Invalid value for '--lr': 'nan' is not a finite number."


def _epochs_inf(ws):
    return ws.finetune("--epochs", "inf"), (
        "Error: Invalid value for '--epochs': 'inf' is not a finite number.")


def _checkpoint_every_nan(ws):
    return ws.finetune("--checkpoint-every", "nan"), (
        "Error: Invalid value for '--checkpoint-every': 'nan' is not a finite number.")


def _bench_seq_beyond_memory(ws):
    # dense float would be skipped with a line; HAD alone does not fit either: an error
    return ["bench", "--seq", "100000000"], re.compile(
        r"hadref: error: --seq 100000000: HAD alone needs about [\d.]+ GiB \(inputs, outputs, "
        r"packed bits\), [\d.]+ GiB available: choose a shorter --seq or a smaller --batch / --heads")


CASES = {f.__name__.lstrip("_"): f for f in (
    _same_as_input, _same_through_dot, _same_through_symlink, _same_through_hard_link,
    _log_is_teacher, _checkpoint_is_teacher, _checkpoint_is_output, _log_is_checkpoint,
    _log_is_the_fine_tuned_teacher, _output_exists, _checkpoint_exists, _log_exists,
    _fine_tuned_teacher_exists, _convert_output_exists, _convert_onto_its_source,
    _convert_onto_its_config, _convert_lone_safetensors_without_heads, _bench_plot_exists,
    _folder_is_a_file, _folder_read_only, _model_lacks_a_parameter, _model_wrong_shape,
    _model_not_finite, _model_tokenizer_beyond_embeddings, _model_config_out_of_range,
    _had_top_n_not_a_number,
    _had_ste_t_not_a_number, _checkpoint_meta_not_json, _checkpoint_meta_missing_field,
    _resume_with_another_train_limit, _resume_with_another_dev_limit, _data_header_only,
    _data_nul_byte, _data_unknown_label, _seed_negative, _bench_seed_negative, _lr_nan,
    _epochs_inf, _checkpoint_every_nan, _bench_seq_beyond_memory,
)}


# --- helpers of the setups --------------------------------------------------------------

def _hf_folder(ws) -> Path:
    """A Hugging Face style folder (config.json, model.safetensors, vocab.txt) of the encoder."""
    import json

    from safetensors.numpy import save_file

    model = hadref.load(ws.model)
    folder = ws / "hf"
    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    shutil.copy(ws.vocab, folder / "vocab.txt")
    return folder


def _edit_line(path: Path, number: int, change) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(True)
    lines[number - 1] = change(lines[number - 1])
    path.write_text("".join(lines), encoding="utf-8")


def _interrupted_finetune(ws, train_limit):
    """What `hadref finetune MODEL -o t.h5 --train-limit N` leaves when killed after step 1
    of 2: its checkpoint t.ckpt.h5 (made through the job's own pieces)."""
    from hadref.data import get_task
    from hadref.train.finetune import FinetuneSettings, ensure_head, finetune
    from hadref.train.jobs import DataSource, task_data

    data = DataSource(str(ws.data), train_limit=train_limit)
    task = get_task("sst2")
    model = hadref.load(ws.model)
    settings = FinetuneSettings(steps=2, batch_size=16, max_len=24)
    ensure_head(model, task, seed=settings.seed)
    train, dev = task_data(task, model, settings.max_len, data)

    def crash(step):
        if step == 1:
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError, match="killed"):
        finetune(model, train, dev[0], task, settings, checkpoint_path=ws / "t.ckpt.h5",
                 checkpoint_every=0.0, on_step=crash, data_settings=data.resume_settings())


# --- the tests ------------------------------------------------------------------------------

@pytest.fixture
def ws(tmp_path, glue_slice, encoder_file, monkeypatch):
    monkeypatch.chdir(tmp_path)   # restored after the test (a case may chdir further)
    (tmp_path / "ws").mkdir()
    workspace = Workspace(tmp_path / "ws", glue_slice, encoder_file)
    workspace.monkeypatch = monkeypatch
    return workspace


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_loses_no_file(case, ws):
    args, expected = CASES[case](ws)
    before = ws.snapshot()
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exit_code == 2, (result.output, result.exception)
    last = result.output.strip().splitlines()[-1]
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(last), last
    else:
        assert last == expected
    assert ws.snapshot() == before   # every file intact, nothing written


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith(("model_", "had_"))])
def test_load_checks_a_model_file_as_info_does(case, ws):
    args, expected = CASES[case](ws)
    with pytest.raises(HadrefError) as err:
        hadref.load(args[-1])
    assert f"hadref: error: {err.value}" == expected


def test_library_settings_refuse_what_the_options_refuse():
    with pytest.raises(HadrefError, match=r"^--seed: expected an integer >= 0, got -1$"):
        hadref.FinetuneSettings(seed=-1).check()
    with pytest.raises(HadrefError, match=r"^--lr-stage3: expected a finite number, got inf$"):
        hadref.DistillSettings(lr_stage3=float("inf")).check()
    with pytest.raises(HadrefError, match=r"^--temperature: expected a finite number, got nan$"):
        hadref.DistillSettings(temperature=float("nan")).check()
