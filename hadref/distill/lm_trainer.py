"""HAD distillation of a decoder: a float Llama teacher -> a student whose attention
binarizes the post-RoPE queries and keys (causal top-N, grouped key heads; issue 20).

One step (HAD.md, "Training"; the BERT trainer :mod:`hadref.distill.trainer` is the model)::

    stage, c   = schedule at this step (c decays by gamma per minibatch in stages 1-2)
    teacher    forward, float attention wrapped in a RecordingCausalCore: logits z_T and
               every layer's post-RoPE q, k
    student    forward(train=True), HADCausalCore at this stage's transform and c; with the
               attention loss on, the core reads the teacher's q, k of each layer as it goes
               (``attention_targets``) and adds that layer's KL to ``core.attention_loss``
               (one layer's (T, T) maps at a time)
    loss       L_out(z_T, z_S) (lm_losses.next_token_kl) + attn_weight * L_attn
    backward   dlogits through the student (the core adds attn_weight * dL_attn/dS itself)
    update     global-norm clip, Adam at the stage's learning rate

The student starts as a copy of the teacher; sigma comes from the teacher
(:mod:`hadref.distill.lm_sigma`); all weights are trained. After sigma, and after each
stage, the first ``eval_windows`` held-out windows are scored with hard binarization and
causal top-N (the inference math, on the dense NumPy path; the student file runs the same
on the packed kernels): the student's perplexity and its KL to the teacher per token
("stage 0" is the teacher binarized without distillation). The loop, checkpoints and resume are
:class:`hadref.train.loop.TrainLoop`'s.
"""

from __future__ import annotations

import math

import numpy as np

from hadref.data.text import Windows, WindowStream, window_batch
from hadref.distill.lm_losses import next_token_kl, token_nll
from hadref.distill.lm_settings import LMDistillSettings
from hadref.distill.lm_sigma import estimate_sigma_lm
from hadref.distill.sigma import sigmas_from_checkpoint
from hadref.engine.optim import Adam, clip_grad_norm
from hadref.errors import HadrefError
from hadref.train.loop import TrainLoop


def training_core(sigma_q, sigma_k, settings: LMDistillSettings):
    from hadref.had.causal_core import HADCausalCore

    return HADCausalCore(sigma_q, sigma_k, top_n=settings.top_n,
                         top_n_ratio=_ratio(settings), transform="tanh1",
                         c=settings.c_start, ste_t=settings.ste_t)


def inference_core(sigma_q, sigma_k, settings: LMDistillSettings):
    from hadref.had.causal_core import HADCausalCore

    return HADCausalCore.for_inference(sigma_q, sigma_k, top_n=settings.top_n,
                                       top_n_ratio=_ratio(settings))


def eval_core(sigma_q, sigma_k, settings: LMDistillSettings):
    """Hard binarization + causal top-N on the dense NumPy path (the same numbers as the
    packed kernels, which the student file runs on): the stage-end evaluations."""
    from hadref.had.causal_core import HADCausalCore

    return HADCausalCore(sigma_q, sigma_k, top_n=settings.top_n, top_n_ratio=_ratio(settings),
                         transform="hard")


def _n_text(settings) -> str:
    """N as the progress line says it: the fixed N, or the ratio per row and a full
    window's N."""
    if settings.top_n is not None:
        return str(settings.top_n)
    return f"{_ratio(settings):g} x keys per row, {settings.effective_top_n} at {settings.max_len}"


def _ratio(settings) -> float:
    return 0.117 if settings.top_n_ratio is None else float(settings.top_n_ratio)


def lm_had_metadata(sigma_q, sigma_k, settings: LMDistillSettings, stage_reached: int,
                    teacher_sha256: str = "") -> dict:
    """The ``had`` group of a decoder student file (the contract of issue 20)."""
    return {"sigma_q": np.asarray(sigma_q, np.float32), "sigma_k": np.asarray(sigma_k, np.float32),
            "top_n": 0 if settings.top_n is None else int(settings.top_n),
            "top_n_ratio": _ratio(settings), "ste_t": float(settings.ste_t),
            "stage": str(stage_reached), "settings": settings.to_dict(),
            "teacher_sha256": teacher_sha256}


def held_out_scores(model, teacher, windows: Windows | None, temperature: float = 1.0) -> dict:
    """{"ppl", "kl", "tokens"} of ``model`` on held-out windows (one at a time): perplexity
    of the next tokens, and mean KL(teacher || model) per position (teacher None: no kl)."""
    if windows is None or len(windows) == 0:
        return {}
    nll, count, kl, positions = 0.0, 0, 0.0, 0
    for i in range(len(windows)):
        b = window_batch(windows, [i])
        out = model.forward(b.input_ids, b.attention_mask)
        s, n = token_nll(out.logits, b.input_ids, b.attention_mask)
        nll, count = nll + s, count + n
        if teacher is not None:
            zt = teacher.forward(b.input_ids, b.attention_mask).logits
            valid = int((b.attention_mask != 0).sum())
            loss, _ = next_token_kl(zt, out.logits, b.attention_mask, temperature,
                                    out=out.logits)
            kl, positions = kl + loss * valid, positions + valid
    scores = {"ppl": math.exp(nll / max(count, 1)), "tokens": count}
    if teacher is not None:
        scores["kl"] = kl / max(positions, 1)
    return scores


def distill_lm(teacher, train: Windows, held: Windows | None, settings: LMDistillSettings, *,
               checkpoint_path=None, checkpoint_every: float = 300.0, resume: bool = False,
               log=None, progress=None, on_step=None, teacher_sha256: str = "",
               data_settings: dict | None = None, start_record: dict | None = None,
               on_stage=None):
    """Distill ``teacher`` (a float LlamaModel) into a HAD student on ``train`` windows.

    held: held-out windows scored after sigma and after each stage (None: none).
    ``data_settings`` (JSON-able: the data source and the windows' digest) are checkpointed
    with the settings and must match on resume; ``start_record`` is logged first, once a
    resume is known to be valid. ``on_stage(stage_number, student)`` runs after each
    stage's evaluation, with the student on its inference core and ``student.had`` set (a
    run writes a student file per stage there). Returns (student with ``student.had`` and
    the inference core, {stage as str: held-out scores}).
    """
    settings.check()
    if getattr(teacher, "family", None) != "llama":
        raise HadrefError("distill --lm: the teacher must be a decoder (a Llama-family model "
                          "file such as `hadref convert smollm2`)")
    if getattr(teacher, "had", None) is not None:
        raise HadrefError("distill --lm: the teacher is already a HAD student; distill a float model")
    if settings.max_len > teacher.config.max_position_embeddings:
        raise HadrefError(f"--max-len {settings.max_len} exceeds the teacher's context length "
                          f"({teacher.config.max_position_embeddings})")
    if train.max_len != settings.max_len:
        raise HadrefError(f"training windows have {train.max_len} tokens, --max-len is "
                          f"{settings.max_len}")
    schedule = settings.make_schedule()
    if held is not None:
        held = held.subset(np.arange(min(settings.eval_windows, len(held))))
    stream = WindowStream(train, settings.batch_size, settings.seed)
    student = teacher.astype(teacher.dtype)
    student.had = None
    optimizer = Adam(student.params, lr=settings.lr)   # Adam, no weight decay (paper)
    rng = np.random.default_rng([settings.seed, 0xD1])  # saved with the state (no dropout)
    loop = TrainLoop(kind="distill-lm", model=student, optimizer=optimizer, stream=stream,
                     rng=rng, total_steps=schedule.total_steps,
                     settings={"teacher_sha256": teacher_sha256, **settings.to_dict(),
                               **(data_settings or {})},
                     checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                     log=log, progress=progress,
                     setting_defaults={**LMDistillSettings().to_dict(), **(data_settings or {})})
    scores = loop.notes.setdefault("held_out", {})
    if resume:
        extra = loop.restore()
        scores = loop.notes.setdefault("held_out", {})
        sigma_q, sigma_k = sigmas_from_checkpoint(extra, teacher.config.num_hidden_layers,
                                                  checkpoint_path)
    if log is not None and start_record is not None:
        log.write(**start_record)
    if not resume:
        sigma_q, sigma_k = estimate_sigma_lm(teacher, train, n_batches=settings.sigma_batches,
                                             batch_size=settings.sigma_batch_size,
                                             seed=settings.seed)
        loop.extra = {"sigma_q": sigma_q, "sigma_k": sigma_k}
        if log is not None:
            log.write(event="sigma", sigma_q=sigma_q.tolist(), sigma_k=sigma_k.tolist())
        if held is not None and len(held):
            scores["teacher"] = held_out_scores(teacher, None, held)
            from hadref.had.causal_core import binarized_teacher

            binarized = binarized_teacher(teacher, sigma_q, sigma_k)  # weights shared
            scores["0"] = _stage_eval(binarized, teacher, sigma_q, sigma_k, settings, held, 0, 0,
                                      log, progress)
            del binarized
    core = training_core(sigma_q, sigma_k, settings)
    student.attention_core = core
    float_core = teacher.attention_core
    from hadref.had.causal_core import RecordingCausalCore

    # the teacher's post-RoPE q, k of the last forward, with the loss weight: the targets
    # the student's core reads layer by layer
    recorder = RecordingCausalCore(float_core, settings.attn_weight)
    if progress is not None:
        progress.start(schedule.total_steps, loop.step)

    def step_fn(step, batch):
        stage, _ = schedule.locate(step)
        c = schedule.c_at(step)
        core.transform = stage.transform
        if c is not None:
            core.c = c
        attn = stage.attn_loss and settings.attn_weight > 0
        teacher.attention_core = recorder
        try:
            z_t = teacher.forward(batch.input_ids, batch.attention_mask).logits
        finally:
            teacher.attention_core = float_core
        core.attention_targets = recorder if attn else None
        core.attention_loss = 0.0
        try:
            out_s = student.forward(batch.input_ids, batch.attention_mask, train=True)
            l_out, dlogits = next_token_kl(z_t, out_s.logits, batch.attention_mask,
                                           settings.temperature, out=out_s.logits)
            del z_t
            l_attn = float(core.attention_loss) if attn else None
            grads = student.backward(dlogits=dlogits)
        finally:
            core.attention_targets = None
        norm = clip_grad_norm(grads, settings.clip)
        optimizer.lr = stage.lr
        optimizer.step(grads)
        loop.notes.update(stage=stage.number, c=c)
        loss = l_out + (settings.attn_weight * l_attn if attn else 0.0)
        return {"stage": stage.number, "c": c, "loss": loss, "l_attn": l_attn, "l_out": l_out,
                "grad_norm": norm, "lr": stage.lr}

    def on_stage_end(step):
        stage, _ = schedule.locate(step)
        if held is not None and len(held):
            scores[str(stage.number)] = _stage_eval(student, teacher, sigma_q, sigma_k, settings,
                                                    held, stage.number, step + 1, log, progress)
        if on_stage is not None:
            _with_inference(student, sigma_q, sigma_k, settings, stage.number, teacher_sha256,
                            lambda: on_stage(stage.number, student))

    try:
        loop.run(step_fn, stage_end=schedule.stage_end, on_stage_end=on_stage_end,
                 on_step=on_step)
    finally:
        teacher.attention_core = float_core
    last = max((s.number for s in schedule.stages if s.steps > 0), default=0)
    student.attention_core = inference_core(sigma_q, sigma_k, settings)
    student.had = lm_had_metadata(sigma_q, sigma_k, settings, last, teacher_sha256)
    return student, scores


def _with_inference(model, sigma_q, sigma_k, settings, stage, teacher_sha256, fn, core=None):
    """Run fn() with ``model`` on ``core`` (default: its inference core) and ``model.had``
    set, then restore both."""
    saved_core, saved_had = model.attention_core, getattr(model, "had", None)
    model.attention_core = core or inference_core(sigma_q, sigma_k, settings)
    model.had = lm_had_metadata(sigma_q, sigma_k, settings, stage, teacher_sha256)
    try:
        return fn()
    finally:
        model.attention_core, model.had = saved_core, saved_had


def _stage_eval(model, teacher, sigma_q, sigma_k, settings, held, number, step, log, progress):
    # the model as inference sees it: hard binarization + causal top-N
    scores = _with_inference(model, sigma_q, sigma_k, settings, number, "",
                             lambda: held_out_scores(model, teacher, held, settings.temperature),
                             core=eval_core(sigma_q, sigma_k, settings))
    if log is not None:
        log.write(event="eval", split="held-out", stage=number, step=step, binarized=True,
                  **scores)
    if progress is not None:
        what = f"after stage {number}" if number else "teacher binarized without distillation"
        progress.message(f"{what}: held-out perplexity {scores['ppl']:.3f}, KL to the teacher "
                         f"{scores['kl']:.4f} per token ({scores['tokens']} tokens, hard "
                         f"binarization, N = {_n_text(settings)})")
    return scores
