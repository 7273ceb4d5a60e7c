"""Teacher fine-tuning: a classifier head and the encoder trained on a GLUE task.

A pre-trained encoder (such as the converted MiniLM) gets a fresh head with the task's
number of outputs; the whole model is trained with AdamW on softmax cross-entropy
(classification) or MSE (regression, STS-B), with dropout, global-norm clipping and a
learning rate that decays linearly to 0 after an optional linear warm-up (the Hugging
Face Trainer's schedule). Defaults are those of the reference teacher in HAD.md ("a quick
schedule that worked"): AdamW 3e-5, batch 32, 1 epoch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from hadref.checks import check_finite_fields, check_seed
from hadref.data.batching import BatchStream
from hadref.engine.layers.dropout import BatchRows
from hadref.engine.layers.losses import mse, softmax_cross_entropy
from hadref.engine.optim import Adam, clip_grad_norm
from hadref.errors import HadrefError
from hadref.train.evaluation import evaluate
from hadref.train.loop import TrainLoop, dropout_scope
from hadref.train.metrics import format_metrics
from hadref.train.parallel import batch_share, current_ranks, scale


@dataclass
class FinetuneSettings:
    """Every setting of a fine-tuning run (the CLI's options, same names)."""

    epochs: float = 1.0
    steps: int | None = None       # overrides epochs when given
    lr: float = 3e-5
    batch_size: int = 32
    max_len: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    clip: float = 1.0
    dropout: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        check_finite_fields(self)
        check_seed(self.seed)
        if self.batch_size < 1 or self.max_len < 1:
            raise HadrefError(f"--batch-size and --max-len must be at least 1, got "
                              f"{self.batch_size} and {self.max_len}")
        if self.weight_decay < 0:
            raise HadrefError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not self.epochs > 0:
            raise HadrefError(f"--epochs must be positive, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise HadrefError(f"--steps must be at least 1, got {self.steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise HadrefError(f"--warmup-ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.clip <= 0 or self.lr <= 0:
            raise HadrefError("--clip and --lr must be positive")


def lr_at(step: int, total: int, lr: float, warmup_ratio: float) -> float:
    """Linear warm-up over the first warmup_ratio * total steps, then linear decay to 0."""
    warm = int(math.ceil(warmup_ratio * total))
    if step < warm:
        return lr * (step + 1) / warm
    return lr * max(0.0, (total - step) / max(1, total - warm))


def ensure_head(model, task, seed: int = 0) -> bool:
    """Give ``model`` a fresh head for ``task`` if it has none; True when one was added.
    A head of the wrong size is an error."""
    if model.num_labels is None:
        model.add_classifier(task.num_labels, seed=seed)
        return True
    if model.num_labels != task.num_labels:
        raise HadrefError(f"the model's classifier head has {model.num_labels} outputs, task "
                          f"{task.name} needs {task.num_labels}")
    return False


def finetune(model, train_data, dev_data, task, settings: FinetuneSettings, *,
             checkpoint_path=None, checkpoint_every: float = 300.0, resume: bool = False,
             log=None, progress=None, on_step=None, eval_batch_size: int = 64,
             eval_every: int = 0, data_settings: dict | None = None,
             start_record: dict | None = None, ranks=None) -> dict:
    """Fine-tune ``model`` in place on ``train_data`` (Encoded); return the dev metrics.

    The model must already have its head (see :func:`ensure_head`). ``eval_every`` > 0 also
    evaluates dev every that many steps (logged and shown, never used to pick weights:
    the result is always the last step's model). ``data_settings`` (JSON-able, e.g. the
    data limits) are checkpointed with the settings and must match on resume;
    ``start_record`` is logged first, once a resume has been checked (a refused resume
    writes nothing).

    ranks (:mod:`hadref.train.parallel`; default: MPI.COMM_WORLD under mpiexec, else one
    process): each rank computes its share of every minibatch and the gradients are summed;
    the result is the same model on every rank. Only rank 0 writes the checkpoint and log.
    """
    settings.check()
    ranks = ranks or current_ranks()
    stream = BatchStream(train_data, settings.batch_size, settings.seed)
    total = settings.steps or max(1, int(round(settings.epochs * stream.batches_per_epoch())))
    optimizer = Adam(model.params, lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng([settings.seed, 0xD0])
    loop = TrainLoop(kind="finetune", model=model, optimizer=optimizer, stream=stream, rng=rng,
                     total_steps=total,
                     settings={"task": task.name, **settings.to_dict(), **(data_settings or {})},
                     checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                     log=log, progress=progress, setting_defaults=data_settings, ranks=ranks)
    if resume:
        loop.restore()
    if log is not None and start_record is not None:
        log.write(**start_record)
    if progress is not None:
        progress.start(total, loop.step)

    def step_fn(step, batch):
        share = batch_share(batch, ranks)   # this rank's rows (all of them for one process)
        b, weight = share.batch, share.example_weight
        with dropout_scope(model, settings.dropout):
            out = model.forward(b.input_ids, b.attention_mask, b.token_type_ids, train=True,
                                rng=BatchRows(rng, share.first_row) if share.first_row else rng)
        if task.is_regression:
            loss, dlogits = mse(out.logits, b.labels)
        else:
            loss, dlogits = softmax_cross_entropy(out.logits, b.labels)
        grads = model.backward(dlogits=scale(dlogits, weight))
        grads, (loss,) = loop.reduce(grads, loss * weight)   # the whole batch's gradient
        norm = clip_grad_norm(grads, settings.clip)
        optimizer.lr = lr_at(step, total, settings.lr, settings.warmup_ratio)
        optimizer.step(grads)
        return {"loss": loss, "grad_norm": norm, "lr": optimizer.lr}

    def after_step(step):
        if eval_every and dev_data is not None and step % eval_every == 0 and step < total:
            metrics_, _ = evaluate(model, dev_data, task, eval_batch_size, ranks)
            if log is not None:
                log.write(event="eval", split="dev", step=step, **metrics_)
            if progress is not None:
                progress.message(f"step {step}: dev {format_metrics(metrics_)}")
        if on_step is not None:
            on_step(step)

    loop.run(step_fn, on_step=after_step)
    dev_metrics, _ = evaluate(model, dev_data, task, eval_batch_size, ranks)
    if log is not None:
        log.write(event="eval", split="dev", step=total, **dev_metrics)
    return dev_metrics
