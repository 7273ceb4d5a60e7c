"""What the file rules allow (issue 18): --overwrite, created folders, the stale temporary
files of an interrupted write removed (only hadref's own), a resume that repeats the data
limits, CRLF data, and a progress line that fits the terminal and ends cleanly."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from test_bad_inputs import Workspace, _interrupted_finetune

import hadref
from hadref.cli import main
from hadref.data.glue import get_task, read_tsv
from hadref.errors import HadrefError
from hadref.files import atomic_file, stale_temps
from hadref.train.progress import Progress


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ws(tmp_path, glue_slice, encoder_file):
    (tmp_path / "ws").mkdir()
    return Workspace(tmp_path / "ws", glue_slice, encoder_file)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_overwrite_replaces_the_outputs_and_keeps_the_input(ws):
    model = _sha(ws.model)
    for name in ("t.h5", "t.log.jsonl", "t.ckpt.h5"):
        (ws / name).write_bytes(b"an earlier run")
    _run(*ws.finetune("-o", ws / "t.h5", "--overwrite"))
    assert hadref.load(ws / "t.h5").num_labels == 2
    assert not (ws / "t.ckpt.h5").exists()                    # the finished run removed it
    assert (ws / "t.log.jsonl").read_text().startswith('{"event": "start"')
    assert _sha(ws.model) == model


def test_a_missing_output_folder_is_created(ws):
    _run(*ws.finetune("-o", ws / "new" / "deeper" / "t.h5"))
    assert (ws / "new" / "deeper" / "t.h5").is_file()


def test_the_next_run_removes_stale_temporary_files_of_its_own_outputs_only(ws):
    dead = _dead_pid()
    stale = [ws / f".t.h5.hadref-{dead}-0badf00d.tmp",     # a model save killed mid-write
             ws / f".t.ckpt.h5.hadref-{dead}-12345678.tmp",  # a checkpoint killed mid-write
             ws / f".t.ckpt.h5.tmp-{dead}",                  # the same, older hadref
             ws / ".t.h5.k2j4_x9q.tmp"]                      # an older hadref's model save
    kept = [ws / f".t.h5.hadref-{dead}-beef.tmp.notes",     # not the pattern
            ws / f".other.h5.hadref-{dead}-0badf00d.tmp",   # another output's
            ws / f".t.h5.hadref-{os.getppid()}-0badf00d.tmp"]  # a live writer's
    for path in stale + kept:
        path.write_bytes(b"x" * 1000)
    assert set(stale_temps(ws / "t.h5")) | set(stale_temps(ws / "t.ckpt.h5")) == set(stale)
    result = _run(*ws.finetune("-o", ws / "t.h5"))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert result.output.count("left by an interrupted write") == 4


def test_atomic_file_leaves_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "m.h5"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.h5"]
    with atomic_file(path) as tmp:
        assert stale_temps(path) == []      # this process's own write is never stale
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["m.h5"]


def test_resume_with_the_same_data_limits_equals_a_straight_run(ws):
    _run(*ws.finetune("-o", ws / "straight.h5", "--train-limit", "100"))
    _interrupted_finetune(ws, train_limit=100)
    _run(*ws.finetune("-o", ws / "t.h5", "--train-limit", "100", "--resume"))
    a, b = hadref.load(ws / "straight.h5"), hadref.load(ws / "t.h5")
    assert all(np.array_equal(a.params[n], b.params[n]) for n in a.params)
    assert not (ws / "t.ckpt.h5").exists()


def test_crlf_data_reads_like_lf(tmp_path, glue_slice):
    lf = glue_slice / "SST-2" / "dev.tsv"
    crlf = tmp_path / "dev.tsv"
    crlf.write_bytes(lf.read_bytes().replace(b"\n", b"\r\n"))
    task = get_task("sst2")
    a, b = read_tsv(task, lf), read_tsv(task, crlf)
    assert a.texts_a == b.texts_a and np.array_equal(a.labels, b.labels)
    assert not any("\r" in t for t in b.texts_a)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_fits_the_terminal_and_ends_its_line(monkeypatch):
    monkeypatch.setattr("hadref.train.progress.shutil.get_terminal_size",
                        lambda fallback=None: os.terminal_size((40, 24)))
    out = _Terminal()
    p = Progress(total=100, stream=out, label="distill ")
    p.update(3, {"stage": 1, "c": 4.5, "loss": 1.25, "l_attn": 0.5, "lr": 2e-5})
    shown = out.getvalue().split("\r\x1b[K")[-1]
    assert len(shown) == 39 and shown.startswith("distill 3/100 | stage 1")
    assert not out.getvalue().endswith("\n")
    p.close()                                   # Ctrl-C: what follows starts a new line
    assert out.getvalue().endswith("\n")
    p.close()
    assert not out.getvalue().endswith("\n\n")  # only an open line is ended


def test_progress_off_a_terminal_is_sparse():
    out = io.StringIO()
    p = Progress(total=100, stream=out, label="finetune ")
    for step in range(1, 100):
        p.update(step, {"loss": 0.5})
    assert out.getvalue() == ""                 # under a minute: nothing yet
    p.update(100, {"loss": 0.5})
    assert out.getvalue().startswith("finetune 100/100") and out.getvalue().count("\n") == 1
    p.message("after stage 1: dev accuracy 50.00")
    assert out.getvalue().endswith("after stage 1: dev accuracy 50.00\n")


@pytest.mark.parametrize("reader", ["passkey_plot", "topn_plot", "passkey_resume"])
def test_results_readers_give_one_line_errors(tmp_path, reader):
    """A results file that is missing, not JSON or not UTF-8 text: a HadrefError naming it
    (hadref.files.read_json_file), never a traceback of json or the OS."""
    from hadref.engine.passkey import PasskeyRun
    from hadref.engine.passkey_plot import read_passkey
    from hadref.train.topn_plot import read_results

    read = {"passkey_plot": read_passkey, "topn_plot": read_results,
            "passkey_resume": lambda p: PasskeyRun.load(p, {})}[reader]
    prefix = "--json " if reader == "passkey_resume" else ""
    missing, text, binary = tmp_path / "none.json", tmp_path / "t.json", tmp_path / "b.json"
    text.write_text("not { json", encoding="utf-8")
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HadrefError, match=f"^{re.escape(prefix + str(missing))}: cannot read it"):
        read(missing)
    for path in (text, binary):
        with pytest.raises(HadrefError, match=f"^{re.escape(prefix + str(path))}: not JSON "
                                              r"\(expected `hadref (passkey|evaluate)"):
            read(path)
