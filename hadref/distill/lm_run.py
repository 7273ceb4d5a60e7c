"""The whole ``hadref distill --lm`` job as a function: decoder teacher file in, HAD student
file out (issue 20).

:func:`run_distill_lm` loads the teacher (a float Llama-family file), builds the text
windows (:func:`hadref.data.text.build_windows`), runs the four stages
(:func:`hadref.distill.lm_trainer.distill_lm`) with its JSON-lines log and checkpoints,
writes a student file after each stage (``OUT-stageK.h5``, when ``stage_files``) and the
final one at ``OUT`` (``had`` metadata, :func:`hadref.engine.io.save`), all atomically,
and returns the result. ``--resume`` continues from the checkpoint with the same settings
and the same text (the windows' sha256 is checked).
"""

from __future__ import annotations

import time
from pathlib import Path

from hadref.data.text import TextSource
from hadref.errors import HadrefError
from hadref.train.jobs import (
    RunFiles,
    default_out,
    file_sha256,
    interrupted,
    load_model_file,
    write_run_results,
)


def stage_file(out, stage: int) -> Path:
    """``DIR/NAME-stageK.h5`` beside the student file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-stage{stage}{out.suffix or '.h5'}")


def run_distill_lm(teacher_path, settings=None, out=None, *, data: TextSource = TextSource(),
                   log=None, checkpoint=None, checkpoint_every: float = 300.0,
                   resume: bool = False, overwrite: bool = False, progress: bool = True,
                   stage_files: bool = True, notify=None, on_step=None) -> dict:
    """Distill the decoder file ``teacher_path`` into a HAD student file.

    settings: :class:`hadref.distill.lm_settings.LMDistillSettings` (default: the quick
    schedule at 1,024 tokens); out: the student file (default ``TEACHER-had.h5``); data:
    the text (:class:`hadref.data.text.TextSource`); notify: called with each one-line
    message about what the job decided. Returns ``{"teacher", "student", "stage_files",
    "held_out" ({stage: {"ppl", "kl", "tokens"}}, "teacher" and "0" = the teacher binarized
    without distillation), "data", "top_n", "top_n_ratio", "max_len", "steps", "wall_s"}``.
    """
    from hadref.distill.lm_settings import LMDistillSettings
    from hadref.distill.lm_trainer import distill_lm
    from hadref.engine.io import save
    from hadref.train.progress import JsonLog, Progress

    t0 = time.monotonic()
    say = notify or (lambda message: None)
    settings = settings or LMDistillSettings()
    settings.check()
    data.check()
    files = RunFiles.beside(out or default_out(teacher_path, "had"), log, checkpoint)
    schedule = settings.make_schedule()
    stages = [s.number for s in schedule.stages if s.steps > 0]
    extra = ({f"stage {k} -o": stage_file(files.out, k) for k in stages if k != stages[-1]}
             if stage_files else {})
    files.claim({"TEACHER.h5": teacher_path}, overwrite=overwrite, resume=resume, notify=say,
                siblings=extra)
    teacher = load_model_file(teacher_path, "teacher")
    if getattr(teacher, "family", None) != "llama":
        raise HadrefError(f"{teacher_path}: distill --lm needs a decoder (Llama-family) file, "
                          f"this is an encoder: drop --lm and give --task")
    if getattr(teacher, "had", None) is not None:
        raise HadrefError(f"{teacher_path} is already a HAD student: distill a float model")
    if settings.max_len > teacher.config.max_position_embeddings:
        raise HadrefError(f"--max-len {settings.max_len} exceeds the teacher's context length "
                          f"({teacher.config.max_position_embeddings})")
    teacher_sha256 = file_sha256(teacher_path)
    train, held, info = build_windows_for(data, teacher, settings, say)
    say(f"text: {info['train_windows']} training windows of {settings.max_len} tokens "
        f"({info['train_tokens']:,} tokens), {info['held_out_windows']} held out")
    data_settings = {"data": data.resume_settings(), "windows_sha256": info["windows_sha256"]}
    resume_run = resume and files.checkpoint.is_file()
    log_file = JsonLog(files.log, append=resume_run)
    shown = Progress(total=0, enabled=progress, label="distill --lm ")
    start = {"event": "start", "job": "distill-lm", "settings": settings.to_dict(),
             "data": {**data.resume_settings(), **info}, "resume": resume,
             "teacher": str(teacher_path), "teacher_sha256": teacher_sha256}
    written = []

    def on_stage(number, student):
        # a stage file is a by-product: failing to write one is said, the run goes on
        if stage_files and number != stages[-1]:
            path = stage_file(files.out, number)
            try:
                save(student, path, had=student.had)
            except (HadrefError, OSError) as err:
                shown.message(f"could not write {path} (student after stage {number}): {err}")
                log_file.write(event="stage_file", stage=number, path=str(path), error=str(err))
                return
            written.append(str(path))
            log_file.write(event="stage_file", stage=number, path=str(path))
            shown.message(f"wrote {path} (student after stage {number})")

    try:
        student, scores = distill_lm(
            teacher, train, held, settings, checkpoint_path=files.checkpoint,
            checkpoint_every=checkpoint_every, resume=resume_run, log=log_file, progress=shown,
            teacher_sha256=teacher_sha256, data_settings=data_settings, start_record=start,
            on_stage=on_stage, on_step=on_step)
    except KeyboardInterrupt:
        raise interrupted(files.checkpoint) from None
    finally:
        shown.close()
        log_file.close()
    save(student, files.out, had=student.had)
    files.checkpoint.unlink(missing_ok=True)  # the run is complete: its file replaces it
    result = {"job": "distill-lm", "teacher": str(teacher_path), "student": str(files.out),
              "stage_files": written, "held_out": scores, "data": info,
              "top_n": settings.top_n, "top_n_ratio": settings.top_n_ratio,
              "effective_top_n": settings.effective_top_n, "max_len": settings.max_len,
              "steps": schedule.total_steps, "settings": settings.to_dict(),
              "wall_s": round(time.monotonic() - t0, 1)}
    write_run_results(files.out, result)
    return result


def build_windows_for(data: TextSource, teacher, settings, notify=None):
    """:func:`hadref.data.text.build_windows` at the settings' length and seed."""
    from hadref.data.text import build_windows

    return build_windows(data, teacher, settings.max_len, settings.seed, notify)
