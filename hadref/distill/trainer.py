"""HAD distillation: a fine-tuned teacher -> a student with binarized, top-N attention.

One step (HAD.md, "Training")::

    stage, c   = schedule at this step (c decays by gamma per minibatch in stages 1-2)
    teacher    forward (float attention, no dropout): logits z_T, scores S_T
    student    forward (HAD core at this stage and c, dropout): logits z_S, scores S_S
               (S_S: the transformed logits before the top-N mask)
    loss       L_out(z_T, z_S) + L_attn(S_T, S_S)   (stage 4 and --no-attn-loss: L_out only)
    backward   dlogits and dscores through the student
    update     global-norm clip at 0.5, Adam at the stage's learning rate

The student starts as a copy of the teacher with the standardization coefficients
estimated on the teacher (:mod:`hadref.distill.sigma`); all its weights are trained. At
the end of each stage the student is evaluated on dev with hard binarization (the
inference path), logged, and checkpointed.
"""

from __future__ import annotations

import hashlib

import numpy as np

from hadref.data.batching import BatchStream
from hadref.distill.losses import attention_kl, output_loss
from hadref.distill.settings import DistillSettings
from hadref.distill.sigma import estimate_sigma, sigmas_from_checkpoint
from hadref.engine.layers.dropout import BatchRows
from hadref.engine.optim import Adam, clip_grad_norm
from hadref.errors import HadrefError
from hadref.train.evaluation import evaluate
from hadref.train.loop import TrainLoop, dropout_scope
from hadref.train.metrics import format_metrics
from hadref.train.parallel import batch_share, current_ranks, scale


def _had_core(sigma_q, sigma_k, settings: DistillSettings, transform: str = "tanh1", c: float = 5.0):
    from hadref.had.core import HADAttentionCore

    return HADAttentionCore(sigma_q, sigma_k, settings.effective_top_n, transform=transform, c=c,
                            ste_t=settings.ste_t)


def had_metadata(sigma_q, sigma_k, settings: DistillSettings, stage_reached: int,
                 teacher_sha256: str = "") -> dict:
    """The ``had`` group of a student file (docs/design.md)."""
    return {"sigma_q": np.asarray(sigma_q, np.float32), "sigma_k": np.asarray(sigma_k, np.float32),
            "top_n": settings.effective_top_n, "ste_t": float(settings.ste_t),
            "stage": str(stage_reached), "settings": settings.to_dict(),
            "teacher_sha256": teacher_sha256}


def _inference_core(sigma_q, sigma_k, settings: DistillSettings):
    from hadref.had.core import HADAttentionCore

    return HADAttentionCore.for_inference(sigma_q, sigma_k, settings.effective_top_n)


def distill(teacher, train_data, dev_data, task, settings: DistillSettings, *,
            checkpoint_path=None, checkpoint_every: float = 300.0, resume: bool = False,
            log=None, progress=None, on_step=None, teacher_sha256: str = "",
            eval_batch_size: int = 64, data_settings: dict | None = None,
            start_record: dict | None = None, ranks=None):
    """Distill ``teacher`` (a model with a head for ``task``) into a HAD student.

    train_data, dev_data: Encoded sets tokenized with the teacher's tokenizer (dev_data
    None: no stage-end evaluation). Returns (student model with ``student.had`` set and
    the inference core attached, {stage number as str: dev metrics with hard binarization},
    '0' being the teacher binarized without distillation). ``data_settings`` (JSON-able,
    e.g. the data limits) are checkpointed with the settings and must match on resume;
    ``start_record`` is logged first, once a resume has been checked (a refused resume
    writes nothing).

    ranks (:mod:`hadref.train.parallel`; default: MPI.COMM_WORLD under mpiexec, else one
    process): each rank computes its share of every minibatch, sigma estimation and the
    stage-end evaluations are split; every rank returns the same student. Only rank 0
    writes the checkpoint and log.
    """
    settings.check()
    ranks = ranks or current_ranks()
    if teacher.num_labels != task.num_labels:
        raise HadrefError(f"the teacher's head has {teacher.num_labels} outputs, task "
                          f"{task.name} needs {task.num_labels}: fine-tune a teacher first")
    schedule = settings.make_schedule()
    stream = BatchStream(train_data, settings.batch_size, settings.seed)
    student = teacher.copy()
    optimizer = Adam(student.params, lr=settings.lr)   # Adam, no weight decay (paper)
    rng = np.random.default_rng([settings.seed, 0xD1])
    loop = TrainLoop(kind="distill", model=student, optimizer=optimizer, stream=stream, rng=rng,
                     total_steps=schedule.total_steps,
                     settings={"task": task.name, "teacher_sha256": teacher_sha256,
                               **settings.to_dict(), **(data_settings or {})},
                     checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                     log=log, progress=progress,
                     setting_defaults={**DistillSettings().to_dict(), **(data_settings or {})},
                     ranks=ranks)
    stage_metrics = loop.notes.setdefault("dev_metrics", {})  # {stage: metrics}, checkpointed
    last_preds: dict = {}   # "preds": the last stage evaluation's predictions (not checkpointed)
    if resume:
        extra = loop.restore()
        stage_metrics = loop.notes.setdefault("dev_metrics", {})
        sigma_q, sigma_k = sigmas_from_checkpoint(extra, teacher.config.num_hidden_layers,
                                                  checkpoint_path)
    if log is not None and start_record is not None:   # after a resume is known to be valid
        log.write(**start_record)
    if not resume:
        sigma_q, sigma_k = estimate_sigma(teacher, train_data, n_batches=settings.sigma_batches,
                                          batch_size=settings.sigma_batch_size, seed=settings.seed,
                                          ranks=ranks)
        loop.extra = {"sigma_q": sigma_q, "sigma_k": sigma_k}
        if log is not None:
            log.write(event="sigma", sigma_q=sigma_q.tolist(), sigma_k=sigma_k.tolist())
        if dev_data is not None:  # the teacher binarized without distillation ("stage 0")
            stage_metrics["0"] = _stage_eval(teacher, sigma_q, sigma_k, settings, dev_data, task,
                                           0, 0, log, progress, eval_batch_size, last_preds, ranks)
    core = _had_core(sigma_q, sigma_k, settings)
    student.attention_core = core
    if progress is not None:
        progress.start(schedule.total_steps, loop.step)
    regression = task.is_regression

    def step_fn(step, batch):
        share = batch_share(batch, ranks)   # this rank's rows (all of them for one process)
        batch = share.batch
        stage, _ = schedule.locate(step)
        c = schedule.c_at(step)
        core.transform = stage.transform
        if c is not None:
            core.c = c
        attn = stage.attn_loss
        out_t = teacher.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                                output_scores=attn)
        with dropout_scope(student, settings.dropout):
            out_s = student.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                                    output_scores=attn, train=True,
                                    rng=BatchRows(rng, share.first_row) if share.first_row else rng)
        l_out, dlogits = output_loss(out_t.logits, out_s.logits, regression=regression,
                                     temperature=settings.temperature)
        l_attn, dscores = 0.0, None
        if attn:
            l_attn, dscores = attention_kl(out_t.scores, out_s.scores, batch.attention_mask != 0)
        # weighted by this rank's share (L_out: a mean over examples, L_attn: over valid
        # query rows), the ranks' gradients sum to the whole batch's
        if dscores is not None and share.row_weight != 1.0:
            dscores = [scale(d, share.row_weight) for d in dscores]
        grads = student.backward(dlogits=scale(dlogits, share.example_weight), dscores=dscores)
        grads, (l_out, l_attn) = loop.reduce(grads, l_out * share.example_weight,
                                             l_attn * share.row_weight)
        norm = clip_grad_norm(grads, settings.clip)
        optimizer.lr = stage.lr
        optimizer.step(grads)
        loop.notes.update(stage=stage.number, c=c)  # for readers of the checkpoint
        return {"stage": stage.number, "c": c, "loss": l_out + l_attn, "l_attn": l_attn if attn else None,
                "l_out": l_out, "grad_norm": norm, "lr": stage.lr}

    def on_stage_end(step):
        stage, _ = schedule.locate(step)
        if dev_data is not None:
            stage_metrics[str(stage.number)] = _stage_eval(student, sigma_q, sigma_k, settings, dev_data,
                                                      task, stage.number, step + 1, log, progress,
                                                      eval_batch_size, last_preds, ranks)

    loop.run(step_fn, stage_end=schedule.stage_end, on_stage_end=on_stage_end, on_step=on_step)
    last = max((s.number for s in schedule.stages if s.steps > 0), default=0)
    student.attention_core = _inference_core(sigma_q, sigma_k, settings)
    student.had = had_metadata(sigma_q, sigma_k, settings, last, teacher_sha256)
    return student, stage_metrics


def _stage_eval(model, sigma_q, sigma_k, settings, dev_data, task, number, step, log, progress,
                batch_size, last_preds, ranks):
    # the model as inference sees it: hard binarization + top-N (the packed kernels)
    training_core = model.attention_core
    model.attention_core = _inference_core(sigma_q, sigma_k, settings)
    try:
        metrics_, preds = evaluate(model, dev_data, task, batch_size, ranks)
    finally:
        model.attention_core = training_core
    # which predictions a stage changed: equal accuracies of two stages then say whether
    # the model stood still or changed as many right answers to wrong as wrong to right
    previous = last_preds.get("preds")
    last_preds["preds"] = preds
    changed = None if previous is None else int(np.count_nonzero(previous != preds))
    if log is not None:
        log.write(event="eval", split="dev", stage=number, step=step, binarized=True,
                  changed_predictions=changed,
                  predictions_sha256=hashlib.sha256(np.ascontiguousarray(preds).tobytes()).hexdigest()[:16],
                  **metrics_)
    if progress is not None:
        shown = format_metrics(metrics_)
        what = (f"after stage {number}" if number else
                "teacher binarized without distillation")
        progress.message(f"{what}: dev {shown} (hard binarization, N = {settings.effective_top_n})")
    return metrics_
