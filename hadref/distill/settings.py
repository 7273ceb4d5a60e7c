"""The settings of a HAD distillation run and the schedule presets (HAD.md, "Training").

``SCHEDULES`` is the one table of what a preset sets; every other setting has one default
for all presets. A setting left at ``None`` takes its preset's value, so
``DistillSettings(schedule="quick")`` and ``DistillSettings.from_schedule("quick")`` are the
same run, and a value given explicitly wins over the preset's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hadref.checks import check_finite_fields, check_seed
from hadref.distill.schedule import Schedule, steps_until
from hadref.errors import HadrefError
from hadref.had.kernels.causal import ratio_top_n

# gamma of the quick schedule: stages 1 + 2 (c from 5 to 0.05) in 1,500 minibatches
QUICK_GAMMA = math.exp(-(math.log(5.0) + math.log(20.0)) / 1500)

# Every value a preset sets (and nothing else).
SCHEDULES = {
    # paper: stage 3 and 4 lengths and N from the paper; gamma is ours (not recoverable);
    # max length 128 (the paper: 256; halved for CPU)
    "paper": {"gamma": 0.9995, "stage3_steps": 10_000, "stage4_steps": 10_000, "max_len": 128},
    # HAD.md's "quick schedule that worked": the same stages with fewer steps
    "quick": {"gamma": QUICK_GAMMA, "stage3_steps": 1_000, "stage4_steps": 1_000, "max_len": 64},
}


def describe_schedule(name: str, c_start: float = 5.0, c_mid: float = 1.0,
                      c_end: float = 0.05) -> str:
    """One line of what preset ``name`` sets, its stage lengths computed from its gamma."""
    p = SCHEDULES[name]
    tanh_steps = steps_until(c_start, c_mid, p["gamma"]) + steps_until(c_mid, c_end, p["gamma"])
    return (f"{name}: gamma {p['gamma']:.6g} (stages 1+2: {tanh_steps:,} steps), stage 3 "
            f"{p['stage3_steps']:,} and stage 4 {p['stage4_steps']:,} steps, max length "
            f"{p['max_len']}")


@dataclass
class DistillSettings:
    """Every setting of HAD.md (the CLI's options, same names). Defaults are the paper's
    where it gives one, marked choices (HAD.md) otherwise; ``None`` for gamma,
    stage3_steps, stage4_steps and max_len means the preset's value (``SCHEDULES``)."""

    schedule: str = "paper"
    gamma: float | None = None        # [choice] per-minibatch decay of c
    c_start: float = 5.0
    c_mid: float = 1.0
    c_end: float = 0.05
    stage3_steps: int | None = None
    stage4_steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-5            # [choice] stages 1-3 (paper: not recoverable)
    lr_stage3: float | None = None   # [choice] stage 3 alone; None: --lr (the paper)
    lr_stage4: float = 5e-6     # [choice] lower stage-4 rate
    clip: float = 0.5           # global-norm clipping [choice: global norm]
    ste_t: float = 1.0          # [choice] STE pass-through window |x| <= t
    top_n: int = 30
    top_n_ratio: float | None = None   # N = round(ratio * max_len) when given
    temperature: float = 1.0
    attn_loss: bool = True      # False: the "w/o AD" ablation
    # [choice] stages whose loss adds L_attn (paper: 1, 2, 3); a list so that it survives
    # the JSON of checkpoints and student files unchanged
    attn_loss_stages: list = dataclasses.field(default_factory=lambda: [1, 2, 3])
    tanh: bool = True           # False: the "w/o Tanh" ablation
    sigma_batches: int = 100
    sigma_batch_size: int = 16
    max_len: int | None = None
    dropout: bool = True        # [choice] student trained with the model's dropout
    seed: int = 0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise HadrefError(f"--schedule must be one of {', '.join(SCHEDULES)}, got "
                              f"{self.schedule!r}")
        for name, value in SCHEDULES[self.schedule].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @classmethod
    def from_schedule(cls, name: str, **overrides) -> "DistillSettings":
        """The preset ``name`` (``"paper"`` or ``"quick"``) with ``overrides`` on top;
        an override of None keeps the preset's value (as an option not given)."""
        return cls(schedule=name, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def effective_top_n(self) -> int:
        """N used in every stage: --top-n, or round(--top-n-ratio * --max-len) (round half
        to even, ``kernels.causal.ratio_top_n``). An encoder keeps one N per sequence
        (HAD.md's rule; N per row is the decoders')."""
        if self.top_n_ratio is not None:
            return max(1, int(ratio_top_n(float(self.top_n_ratio), int(self.max_len))))
        return int(self.top_n)

    def make_schedule(self) -> Schedule:
        return Schedule(gamma=self.gamma, c_start=self.c_start, c_mid=self.c_mid,
                        c_end=self.c_end, stage3_steps=self.stage3_steps,
                        stage4_steps=self.stage4_steps, lr=self.lr, lr_stage4=self.lr_stage4,
                        attn_loss=self.attn_loss, tanh=self.tanh,
                        attn_loss_stages=self.attn_loss_stages, lr_stage3=self.lr_stage3)

    def check(self) -> None:
        check_finite_fields(self)
        check_seed(self.seed)
        if self.top_n < 1:
            raise HadrefError(f"--top-n must be at least 1, got {self.top_n}")
        if self.top_n_ratio is not None and not 0 < self.top_n_ratio <= 1:
            raise HadrefError(f"--top-n-ratio must lie in (0, 1], got {self.top_n_ratio}")
        if self.ste_t <= 0 or self.clip <= 0 or self.temperature <= 0:
            raise HadrefError("--ste-t, --clip and --temperature must be positive")
        if self.batch_size < 1:
            raise HadrefError(f"--batch-size must be at least 1, got {self.batch_size}")
        self.make_schedule()  # validates gamma, c values, step counts, learning rates
