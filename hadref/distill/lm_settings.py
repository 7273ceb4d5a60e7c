"""The settings of a language-model HAD distillation (``hadref distill --lm``).

The same settings and stage plan as the BERT distillation
(:class:`hadref.distill.settings.DistillSettings`, :mod:`hadref.distill.schedule`), with
the defaults a decoder needs: N scaled with the context (``top_n_ratio`` 0.117 per query
row: a row seeing s keys keeps round(0.117 s), the paper's 30 at 256) unless ``top_n``
fixes it, one window of ``max_len`` tokens per minibatch, sigma from a few windows, no
dropout (Llama has none), and an attention-loss weight. ``LM_SCHEDULES`` holds the
presets; a setting left at None takes its preset's value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hadref.checks import check_finite_fields, check_seed
from hadref.distill.schedule import steps_until
from hadref.distill.settings import QUICK_GAMMA, DistillSettings
from hadref.errors import HadrefError
from hadref.had.kernels.causal import ratio_top_n

# Every value an LM preset sets (and nothing else).
LM_SCHEDULES = {
    # the paper's stage 3 and 4 lengths; gamma is ours (not recoverable)
    "paper": {"gamma": 0.9995, "stage3_steps": 10_000, "stage4_steps": 10_000, "max_len": 1024},
    # HAD.md's "quick schedule that worked": stages 1 + 2 in 1,500 steps, 1,000 + 1,000 after
    "quick": {"gamma": QUICK_GAMMA, "stage3_steps": 1_000, "stage4_steps": 1_000, "max_len": 1024},
}


def gamma_for_tanh_steps(steps: int, c_start: float = 5.0, c_mid: float = 1.0,
                         c_end: float = 0.05) -> float:
    """The gamma that makes stages 1 + 2 (c from c_start to c_end) about ``steps`` steps."""
    if steps < 2:
        raise HadrefError(f"--tanh-steps must be at least 2, got {steps}")
    return math.exp(-(math.log(c_start / c_mid) + math.log(c_mid / c_end)) / steps)


def describe_lm_schedule(name: str) -> str:
    p = LM_SCHEDULES[name]
    tanh = steps_until(5.0, 1.0, p["gamma"]) + steps_until(1.0, 0.05, p["gamma"])
    return (f"{name}: gamma {p['gamma']:.6g} (stages 1+2: {tanh:,} steps), stage 3 "
            f"{p['stage3_steps']:,} and stage 4 {p['stage4_steps']:,} steps, max length "
            f"{p['max_len']}")


@dataclass
class LMDistillSettings(DistillSettings):
    """Every setting of an LM distillation (the CLI's options, same names). Defaults as
    :class:`DistillSettings` except: schedule 'quick' (``LM_SCHEDULES``), top_n None with
    top_n_ratio 0.117 (N per query row: round(0.117 s) of the s keys a row sees, 30 for the
    last row of a 256-token window; ``hadref.had.causal_core``), batch_size 1,
    sigma_batches 8 windows of sigma_batch_size 1, dropout False; attn_weight multiplies
    L_attn in the total loss (HAD.md: 1); eval_windows: how many of the held-out windows
    are scored after sigma and after each stage (each costs a student and a teacher
    forward)."""

    schedule: str = "quick"
    batch_size: int = 1
    top_n: int | None = None
    top_n_ratio: float | None = 0.117
    sigma_batches: int = 8
    sigma_batch_size: int = 1
    dropout: bool = False
    attn_weight: float = 1.0
    eval_windows: int = 4       # held-out windows scored after sigma and each stage (0: none)

    def __post_init__(self):
        if self.schedule not in LM_SCHEDULES:
            raise HadrefError(f"--schedule must be one of {', '.join(LM_SCHEDULES)}, got "
                              f"{self.schedule!r}")
        for name, value in LM_SCHEDULES[self.schedule].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @classmethod
    def from_schedule(cls, name: str, **overrides) -> "LMDistillSettings":
        return cls(schedule=name, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def effective_top_n(self) -> int:
        """N of a row that sees a full window: top_n, or round(top_n_ratio * max_len) (at
        least 1; ``kernels.causal.ratio_top_n``, the rule every row follows with its own
        count of keys)."""
        if self.top_n is not None:
            return int(self.top_n)
        return max(1, int(ratio_top_n(float(self.top_n_ratio), int(self.max_len))))

    def check(self) -> None:
        check_finite_fields(self)
        check_seed(self.seed)
        if self.top_n is not None and self.top_n < 1:
            raise HadrefError(f"--top-n must be at least 1, got {self.top_n}")
        if self.top_n is None and self.top_n_ratio is None:
            raise HadrefError("give --top-n or --top-n-ratio")
        if self.top_n_ratio is not None and not 0 < self.top_n_ratio <= 1:
            raise HadrefError(f"--top-n-ratio must lie in (0, 1], got {self.top_n_ratio}")
        if self.ste_t <= 0 or self.clip <= 0 or self.temperature <= 0:
            raise HadrefError("--ste-t, --clip and --temperature must be positive")
        if self.attn_weight < 0:
            raise HadrefError(f"--attn-weight must be >= 0, got {self.attn_weight}")
        if self.batch_size < 1:
            raise HadrefError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.eval_windows < 0:
            raise HadrefError(f"--eval-windows must be >= 0, got {self.eval_windows}")
        if self.max_len < 2:
            raise HadrefError(f"--max-len must be at least 2, got {self.max_len}")
        if self.dropout:
            raise HadrefError("dropout: a Llama decoder has no dropout to train with")
        self.make_schedule()  # validates gamma, c values, step counts, learning rates
