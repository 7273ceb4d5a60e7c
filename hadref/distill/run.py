"""The whole ``hadref distill`` job as a function: teacher file in, student file out.

:func:`run_distill` loads the teacher, fine-tunes one first when the file is a pre-trained
encoder without a head for the task (exactly as ``hadref finetune`` would, saved as
``OUT-teacher.h5``), evaluates the teacher, runs the four stages
(:func:`hadref.distill.trainer.distill`) with its log and checkpoints, writes the student
atomically and returns the result. ``--resume`` rules: a run resumes from its own
checkpoint; a head-less run also resumes its teacher fine-tune, or reuses the teacher it
already wrote. Under mpiexec every rank runs the job and rank 0 alone writes files.
"""

from __future__ import annotations

import time

from hadref.errors import HadrefError
from hadref.train.jobs import (
    DataSource,
    RunFiles,
    default_out,
    file_sha256,
    finetune_files,
    interrupted,
    load_model_file,
    task_data,
    write_run_results,
)
from hadref.train.metrics import format_metrics
from hadref.train.parallel import current_ranks

_FT = "fine-tuned teacher "   # how messages name the files of a head-less encoder's fine-tune


def run_distill(teacher_path, task, settings=None, out=None, *, finetune=None,
                allow_finetune: bool = True, data: DataSource = DataSource(), log=None,
                checkpoint=None, checkpoint_every: float = 300.0, resume: bool = False,
                overwrite: bool = False, progress: bool = True, notify=None,
                ranks=None) -> dict:
    """Distill the teacher file ``teacher_path`` into a HAD student file.

    task: a GLUE task name or :class:`hadref.data.Task`; settings:
    :class:`hadref.distill.trainer.DistillSettings` (default: the paper schedule; see
    ``DistillSettings.from_schedule``); out: the student file (default ``TEACHER-had.h5``);
    finetune: :class:`hadref.train.finetune.FinetuneSettings` of the teacher fine-tune a
    head-less encoder gets (its max_len and seed follow ``settings``); allow_finetune False
    makes a head-less teacher an error; notify: called with each one-line message about
    what the job decided (the CLI prints them to stderr); ranks: the MPI ranks (default:
    all of mpiexec's, else one process). The files the job writes (the student, its log
    and checkpoint, and a head-less encoder's ``OUT-teacher.h5`` with its own) must differ
    from the teacher and each other; an existing one is replaced only with ``overwrite``
    or ``resume`` (:mod:`hadref.files`).

    Returns ``{"task", "teacher", "student", "teacher_metrics", "metrics" (the student's
    dev metrics, hard binarization), "stage_metrics" ({stage: metrics}, "0" = teacher
    binarized without distillation), "top_n", "schedule", "wall_s"}``.

    >>> s = DistillSettings.from_schedule("quick")
    >>> hadref.run_distill("weights/minilm-sst2.h5", "sst2", s)["metrics"]
    """
    import dataclasses
    from pathlib import Path

    from hadref.data import get_task
    from hadref.distill.trainer import DistillSettings, distill
    from hadref.engine.io import save
    from hadref.train.evaluation import evaluate
    from hadref.train.finetune import FinetuneSettings
    from hadref.train.progress import JsonLog, Progress

    ranks = ranks or current_ranks()
    say = (notify if ranks.is_root else None) or (lambda message: None)
    settings = settings or DistillSettings()
    settings.check()
    t = get_task(task) if isinstance(task, str) else task
    files = RunFiles.beside(out or default_out(teacher_path, "had"), log, checkpoint)
    # where a head-less encoder's teacher goes, with its own log and checkpoint
    ft_files = RunFiles.beside(files.out.with_name(files.out.stem + "-teacher.h5"))
    inputs = {"TEACHER.h5": teacher_path}
    files.claim(inputs, overwrite=overwrite, resume=resume, notify=say,
                siblings=ft_files.named(_FT))
    teacher = load_model_file(teacher_path, "teacher")
    if teacher.had is not None:
        raise HadrefError(f"{teacher_path} is already a HAD student; distill from a float teacher")
    headless = teacher.num_labels is None
    if resume and not (files.checkpoint.is_file() or (
            headless and (ft_files.checkpoint.is_file() or ft_files.out.is_file()))):
        raise HadrefError(f"no checkpoint to resume from at {files.checkpoint} (--resume)")
    from hadref.train import provenance

    if headless and allow_finetune:
        ft_files.claim(inputs, overwrite=overwrite, resume=resume, notify=say, prefix=_FT)
    record = []
    train, dev = task_data(t, teacher, settings.max_len, data, record=record)
    t0 = time.monotonic()
    teacher_file = Path(teacher_path)
    if headless:
        if not allow_finetune:
            raise HadrefError(f"{teacher_path} has no classifier head for {t.name} (a pre-trained "
                              "encoder): fine-tune it first (hadref finetune) or drop --no-finetune")
        teacher_file = ft_files.out
        if resume and teacher_file.is_file() and not ft_files.checkpoint.is_file():
            say(f"{teacher_path} has no head for {t.name}: using the teacher already "
                f"fine-tuned at {teacher_file}")
        else:
            ft = dataclasses.replace(finetune or FinetuneSettings(), max_len=settings.max_len,
                                     dropout=True, seed=settings.seed)
            ft.check()
            say(f"{teacher_path} has no head for {t.name}: fine-tuning a teacher first "
                f"(as `hadref finetune` would), saved to {teacher_file}")
            ft_prov = provenance.build("finetune", t, record, {"seed": ft.seed}, ft.to_dict())
            ft_prov["base"] = {"file": str(teacher_path), "sha256": file_sha256(teacher_path)}
            ft_metrics = finetune_files(teacher, t, train, dev, ft, ft_files,
                                        checkpoint_every=checkpoint_every,
                                        resume=resume and ft_files.checkpoint.is_file(),
                                        progress=progress, data=data, ranks=ranks,
                                        provenance=ft_prov)
            say(f"teacher {teacher_file}: dev {format_metrics(ft_metrics)}")
        teacher = load_model_file(teacher_file, "teacher")  # exactly what the file holds
    if provenance.head_task(teacher) not in (None, t.name):
        raise HadrefError(f"{teacher_file}: its head was trained on {provenance.head_task(teacher)}, "
                          f"not {t.name}: distill a teacher of {t.name}")
    teacher_metrics, _ = evaluate(teacher, dev[0], t, ranks=ranks)
    teacher_sha256 = file_sha256(teacher_file)
    resume_distill = resume and files.checkpoint.is_file()
    log_file = JsonLog(files.log if ranks.is_root else None, append=resume_distill)
    shown = Progress(total=0, enabled=progress and ranks.is_root, label="distill ")
    start = {"event": "start", "job": "distill", "task": t.name, "settings": settings.to_dict(),
             "data": data.resume_settings(), "resume": resume, "teacher": str(teacher_file),
             "teacher_metrics": teacher_metrics}
    try:
        student, stage_metrics = distill(
            teacher, train, dev[0], t, settings, checkpoint_path=files.checkpoint,
            checkpoint_every=checkpoint_every, resume=resume_distill, log=log_file,
            progress=shown, teacher_sha256=teacher_sha256,
            data_settings=data.resume_settings(), start_record=start, ranks=ranks)
    except KeyboardInterrupt:
        raise interrupted(files.checkpoint) from None
    finally:
        shown.close()
        log_file.close()
    student.provenance = provenance.build(
        "distill", t, record, {"seed": settings.seed}, settings.to_dict(),
        teacher={"file": str(teacher_file), "sha256": teacher_sha256, "metrics": teacher_metrics,
                 "provenance": teacher.provenance})
    if ranks.is_root:
        save(student, files.out)
        files.checkpoint.unlink(missing_ok=True)  # the run is complete: its file replaces it
    ranks.barrier()
    metrics = (stage_metrics.get(str(student.had["stage"]))
               or evaluate(student, dev[0], t, ranks=ranks)[0])
    if ranks.is_root:
        write_run_results(files.out, {"job": "distill", "task": t.name, "metrics": metrics,
                                      "teacher_metrics": teacher_metrics,
                                      "stage_metrics": stage_metrics,
                                      "top_n": settings.effective_top_n,
                                      "settings": settings.to_dict(),
                                      "provenance": student.provenance})
    return {"task": t.name, "teacher": str(teacher_file), "student": str(files.out),
            "teacher_metrics": teacher_metrics, "metrics": metrics,
            "stage_metrics": stage_metrics, "top_n": settings.effective_top_n,
            "schedule": settings.schedule, "wall_s": round(time.monotonic() - t0, 1)}
