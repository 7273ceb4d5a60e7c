"""The training loop shared by fine-tuning and distillation: steps, checkpoints, resume.

A run's state is the model's parameters, the optimizer state, the dropout generator, the
data position and the step; :class:`TrainLoop` saves it atomically every
``checkpoint_every`` seconds, at the end of each stage, on Ctrl-C and at the end, and
restores it on ``--resume``. Everything a step uses is a function of that state (c and
the stage come from the step in closed form), so a resumed run ends with the same
weights, bit for bit, as an uninterrupted one with the same seed and thread count.

Under MPI (``ranks``, :mod:`hadref.train.parallel`) every rank runs the same loop: a step
function sums its rank's gradients with :meth:`TrainLoop.reduce` (one Allreduce, which also
carries Ctrl-C so that all ranks stop after the same step), the parameters are compared
across ranks every ``CHECK_EVERY`` steps, at stage ends and at the end, and rank 0 alone
writes the checkpoint. The checkpoint holds nothing rank-specific: any number of ranks
resumes it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from hadref.errors import HadrefError
from hadref.train.checkpoint import check_meta, load_checkpoint, save_checkpoint
from hadref.train.parallel import CHECK_EVERY, SINGLE, GradientSum


class TrainLoop:
    """Runs ``step_fn(step, batch) -> dict of logged numbers`` for steps [start, total).

    kind: 'finetune' or 'distill' (a checkpoint of one cannot resume the other);
    settings: JSON-able dict that must match on resume; a setting missing from the
    checkpoint (added to hadref after it was written) matches when this run has its value
    in ``setting_defaults``. ``extra`` ({name: array}, e.g. sigma) and ``notes``
    (JSON-able) are saved and restored with the state; ``stage_end(step) -> bool`` marks
    the steps after which ``on_stage_end(step)`` runs (evaluation) and a checkpoint is
    written. ``ranks``: the MPI ranks of a data-parallel run (default: one process).
    """

    def __init__(self, *, kind, model, optimizer, stream, rng, total_steps, settings,
                 checkpoint_path=None, checkpoint_every: float = 300.0, log=None,
                 progress=None, setting_defaults=None, ranks=None):
        self.kind, self.model, self.optimizer = kind, model, optimizer
        self.stream, self.rng, self.total = stream, rng, int(total_steps)
        self.settings = settings
        self.setting_defaults = setting_defaults or {}
        self.path, self.every = checkpoint_path, float(checkpoint_every)
        if not self.every >= 0:   # NaN too
            raise HadrefError(f"--checkpoint-every: expected seconds >= 0, got {checkpoint_every}")
        self.log, self.progress = log, progress
        self.extra: dict = {}
        self.step = 0
        self.notes: dict = {}   # JSON-able run facts saved with the checkpoint (dev metrics)
        self.ranks = ranks or SINGLE
        self.gradient_sum: GradientSum | None = None   # sized on the first reduce (MPI only)
        self._interrupt = None
        self._stop = False   # Ctrl-C agreed by all ranks in the last reduce

    def reduce(self, grads: dict, *scalars):
        """(gradients, scalars) summed over the ranks: one Allreduce of one flat buffer
        (the step function has weighted its share); also tells every rank whether any got
        Ctrl-C. One process: returned as given."""
        if not self.ranks.parallel:
            return grads, scalars
        if self.gradient_sum is None:
            self.gradient_sum = GradientSum(self.model.params, self.ranks, len(scalars))
        requested = self._interrupt is not None and self._interrupt.requested
        grads, values, stop = self.gradient_sum(grads, scalars, requested)
        self._stop = self._stop or stop
        if self.ranks.size == 1:   # the sum of one: keep the numbers unrounded (exact logs)
            return grads, scalars
        return grads, tuple(float(v) for v in values)

    # --- state -----------------------------------------------------------------------------

    def save(self) -> None:
        if self.path is None or not self.ranks.is_root:
            return
        state = self.optimizer.state_dict()
        optim = {f"m.{n}": a for n, a in state["m"].items()}
        optim.update({f"v.{n}": a for n, a in state["v"].items()})
        arrays = {"params": self.model.params, "optim": optim, "extra": self.extra}
        meta = {"kind": self.kind, "step": self.step, "total_steps": self.total,
                "settings": self.settings, "rng": self.rng.bit_generator.state,
                "data": self.stream.state(), "optim_t": int(state["t"]),
                "notes": self.notes}
        save_checkpoint(self.path, arrays, meta)
        self._saved_at = time.monotonic()

    def restore(self) -> dict:
        """Load the checkpoint at ``self.path`` into the model, optimizer, generator and
        stream; return its ``extra`` arrays."""
        arrays, meta = load_checkpoint(self.path)
        check_meta(meta, self.path)
        if meta.get("kind") != self.kind:
            raise HadrefError(f"{self.path}: a {meta.get('kind')} checkpoint cannot resume {self.kind}")
        saved = {**{k: v for k, v in self.setting_defaults.items() if k not in meta["settings"]},
                 **meta["settings"]}
        changed = sorted(k for k in set(saved) | set(self.settings)
                         if saved.get(k) != self.settings.get(k))
        if changed:
            k = changed[0]
            raise HadrefError(f"{self.path}: checkpoint made with {k} = {saved.get(k)!r}, "
                              f"this run has {self.settings.get(k)!r}: resume with the same settings"
                              + (f" ({len(changed)} differ: {', '.join(changed)})"
                                 if len(changed) > 1 else ""))
        if meta["total_steps"] != self.total:
            raise HadrefError(f"{self.path}: checkpoint made for {meta['total_steps']} steps, "
                              f"this run has {self.total}: resume with the same settings")
        params = arrays.get("params", {})
        if set(params) != set(self.model.params):
            raise HadrefError(f"{self.path}: checkpoint parameters do not match the model")
        for name, value in params.items():
            if value.shape != self.model.params[name].shape:
                raise HadrefError(f"{self.path}: checkpoint parameter {name} has shape "
                                  f"{value.shape}, the model {self.model.params[name].shape}")
        optim = arrays.get("optim", {})
        try:
            self.optimizer.load_state_dict({
                "t": meta["optim_t"],
                "m": {n[2:]: a for n, a in optim.items() if n.startswith("m.")},
                "v": {n[2:]: a for n, a in optim.items() if n.startswith("v.")}})
            self.stream.restore(meta["data"])
            self.rng.bit_generator.state = meta["rng"]
        except HadrefError as err:
            raise HadrefError(f"{self.path}: {err}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise HadrefError(f"{self.path}: malformed checkpoint state "
                              f"({type(err).__name__}: {err})") from None
        for name, value in params.items():
            self.model.params[name][...] = value
        self.step = int(meta["step"])
        self.notes = meta.get("notes", {})
        self.extra = arrays.get("extra", {})
        return self.extra

    # --- the loop --------------------------------------------------------------------------

    def run(self, step_fn, stage_end=None, on_stage_end=None, on_step=None) -> None:
        """Make the remaining steps. ``on_step(step)`` (tests) runs after each step and
        its checkpoint decision. Ctrl-C is deferred to the end of the current step, which
        is then checkpointed before KeyboardInterrupt propagates (a half-made step would
        leave the generator or the weights between two states). Any other exception
        propagates at once and keeps the last checkpoint, as a real crash would."""
        self._saved_at = start = time.monotonic()
        with _DeferredInterrupt() as interrupt:
            self._interrupt = interrupt
            while self.step < self.total:
                step = self.step
                fields = step_fn(step, self.stream.next())
                self.step = step + 1
                ends_stage = stage_end is not None and stage_end(step)
                if self.ranks.parallel and (ends_stage or self.step % CHECK_EVERY == 0
                                            or self.step == self.total):
                    self.ranks.check_same(self.model.params, self.step)
                if self.log is not None:
                    self.log.write(step=self.step, **fields,
                                   time_s=round(time.monotonic() - start, 3))
                if self.progress is not None:
                    self.progress.update(self.step, fields)
                if ends_stage:
                    if on_stage_end is not None:
                        on_stage_end(step)
                    self.save()
                elif time.monotonic() - self._saved_at >= self.every:
                    self.save()
                if on_step is not None:
                    on_step(self.step)
                if (self._stop if self.gradient_sum is not None else interrupt.requested):
                    self.save()
                    self.ranks.barrier()   # no rank ends the job while rank 0 still writes
                    raise KeyboardInterrupt
        self.save()


class _DeferredInterrupt:
    """Within the block, SIGINT sets ``requested`` instead of raising (main thread only;
    elsewhere it changes nothing)."""

    def __enter__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


@contextlib.contextmanager
def dropout_scope(model, enabled: bool):
    """Within the block, the model's dropout probabilities are 0 unless ``enabled`` (a
    training forward still keeps the cache its backward needs)."""
    cfg = model.config
    saved = cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob
    if not enabled:
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    try:
        yield
    finally:
        cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob = saved
