"""The library runs what the CLI runs: schedule presets, and run_finetune / run_distill /
run_evaluate on a tiny model (the same results as the commands, without click)."""

import json

import pytest
from click.testing import CliRunner

import hadref
from hadref.cli import main
from hadref.distill.schedule import steps_until
from hadref.distill.settings import QUICK_GAMMA, SCHEDULES, DistillSettings, describe_schedule
from hadref.errors import HadrefError
from hadref.train.jobs import DataSource, RunFiles


def test_presets_set_every_value_of_their_table_row():
    for name, row in SCHEDULES.items():
        settings = DistillSettings.from_schedule(name)
        assert {k: getattr(settings, k) for k in row} == row
        assert DistillSettings(schedule=name) == settings
    quick = DistillSettings.from_schedule("quick")
    assert quick.max_len == 64 and quick.gamma == QUICK_GAMMA and quick.stage3_steps == 1000
    assert DistillSettings().max_len == 128 and DistillSettings().gamma == 0.9995


def test_overrides_win_and_none_keeps_the_preset():
    s = DistillSettings.from_schedule("quick", max_len=32, gamma=None, stage4_steps=7)
    assert (s.max_len, s.gamma, s.stage4_steps, s.stage3_steps) == (32, QUICK_GAMMA, 7, 1000)
    with pytest.raises(HadrefError, match="--schedule must be one of paper, quick"):
        DistillSettings.from_schedule("fast")


def test_schedule_help_counts_its_steps():
    text = describe_schedule("quick")
    n = steps_until(5.0, 1.0, QUICK_GAMMA) + steps_until(1.0, 0.05, QUICK_GAMMA)
    assert f"stages 1+2: {n:,} steps" in text and "max length 64" in text
    assert "stages 1+2: 9,209 steps" in describe_schedule("paper")


def test_run_files_default_beside_the_output(tmp_path):
    files = RunFiles.beside(tmp_path / "student.h5")
    assert files.log == tmp_path / "student.log.jsonl"
    assert files.checkpoint == tmp_path / "student.ckpt.h5"


def test_python_jobs_match_the_commands(glue_slice, encoder_file, tmp_path):
    data = DataSource(data_dir=str(glue_slice))
    ft = hadref.FinetuneSettings(steps=4, batch_size=8, max_len=24)
    result = hadref.run_finetune(encoder_file, "sst2", ft, tmp_path / "teacher.h5", data=data,
                                 progress=False)
    assert result["out"] == str(tmp_path / "teacher.h5") and "accuracy" in result["metrics"]
    assert not (tmp_path / "teacher.ckpt.h5").exists()   # a finished run removes its checkpoint

    settings = DistillSettings.from_schedule("quick", gamma=0.5, stage3_steps=2, stage4_steps=2,
                                             sigma_batches=2, top_n=6, max_len=24)
    py = hadref.run_distill(tmp_path / "teacher.h5", "sst2", settings, tmp_path / "py.h5",
                            data=data, progress=False)
    cli = CliRunner().invoke(main, [
        "distill", str(tmp_path / "teacher.h5"), "--task", "sst2", "--schedule", "quick",
        "--gamma", "0.5", "--stage3-steps", "2", "--stage4-steps", "2", "--sigma-batches", "2",
        "--top-n", "6", "--max-len", "24", "--quiet", "--json", "--data", str(glue_slice),
        "-o", str(tmp_path / "cli.h5")])
    assert cli.exit_code == 0, cli.output
    cli = json.loads(cli.output.strip().splitlines()[-1])
    assert py["metrics"] == cli["metrics"] and py["stage_metrics"] == cli["stage_metrics"]
    assert py["schedule"] == "quick" and py["top_n"] == 6

    ev = hadref.run_evaluate(tmp_path / "py.h5", "sst2", check=True, data=data)
    assert ev["metrics"] == py["metrics"] and ev["check"]["dev"]["agree"]
    assert ev["max_len"] == 24 and ev["top_n"] == 6


def test_python_jobs_raise_hadref_errors(glue_slice, encoder_file, tmp_path):
    data = DataSource(data_dir=str(glue_slice))
    with pytest.raises(HadrefError, match="teacher file not found"):
        hadref.run_distill(tmp_path / "none.h5", "sst2", data=data)
    with pytest.raises(HadrefError, match="has no classifier head for sst2"):
        hadref.run_distill(encoder_file, "sst2", DistillSettings(max_len=24),
                           allow_finetune=False, data=data, out=tmp_path / "s.h5")
    with pytest.raises(HadrefError, match="no classifier head"):
        hadref.run_evaluate(encoder_file, "sst2", data=data)
