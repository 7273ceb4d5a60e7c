"""The four HAD stages and the c schedule (HAD.md, "Training").

``c`` decays by ``gamma`` every minibatch. Stage 1 (``tanh1``) starts at ``c_start`` and
lasts while ``c > c_mid``; stage 2 (``tanh2``) restarts exactly at ``c_mid`` (at c = 1 the
two transforms are the same function, so the switch is continuous) and lasts while
``c > c_end``; stage 3 (``ste``, attention + output loss) and stage 4 (``ste``, output
loss only, lower learning rate) run fixed step counts. c at a step is computed in closed
form, ``c0 * gamma**j`` in float64, never by repeated multiplication, so a resumed run
sees exactly the values of an uninterrupted one.

``tanh=False`` is the paper's "w/o Tanh" ablation: stages 1-2 are replaced by as many STE
steps (with the attention loss), followed by stages 3 and 4 as usual. ``attn_loss=False`` is
"w/o AD" (no attention loss anywhere); ``attn_loss_stages`` chooses the stages among 1-3
that add it (the paper: all three; stage 4 never).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hadref.errors import HadrefError


@dataclass(frozen=True)
class Stage:
    """One stage: number 1-4, the HAD core's transform, step count, learning rate,
    whether the attention loss is on, and (tanh stages) c at its first step."""

    number: int
    transform: str      # the HAD core's Q/K transform (hadref.had.binarize.TRANSFORMS)
    steps: int
    lr: float
    attn_loss: bool
    c0: float | None = None


def steps_until(c0: float, c1: float, gamma: float) -> int:
    """Number of minibatches j = 0, 1, ... with c0 * gamma**j > c1."""
    if not 0.0 < gamma < 1.0:
        raise HadrefError(f"--gamma must lie in (0, 1), got {gamma}")
    if c0 <= c1:
        return 0
    # tiny slack: an exact power (c0 * gamma**m == c1) ends the stage at m, not m + 1
    return max(0, math.ceil(math.log(c0 / c1) / -math.log(gamma) - 1e-9))


class Schedule:
    """The stage plan of one distillation run and the position -> (stage, c) map."""

    def __init__(self, *, gamma: float, c_start: float = 5.0, c_mid: float = 1.0,
                 c_end: float = 0.05, stage3_steps: int, stage4_steps: int, lr: float,
                 lr_stage4: float, attn_loss: bool = True, tanh: bool = True,
                 attn_loss_stages=(1, 2, 3), lr_stage3: float | None = None):
        if not c_start > c_mid > c_end > 0:
            raise HadrefError(f"the c schedule needs c_start > c_mid > c_end > 0, got "
                              f"{c_start}, {c_mid}, {c_end}")
        if stage3_steps < 0 or stage4_steps < 0:
            raise HadrefError("--stage3-steps and --stage4-steps must be >= 0")
        lr_stage3 = lr if lr_stage3 is None else lr_stage3   # the paper: one rate for stages 1-3
        if lr <= 0 or lr_stage3 <= 0 or lr_stage4 <= 0:
            raise HadrefError(f"learning rates must be positive, got --lr {lr}, --lr-stage3 "
                              f"{lr_stage3}, --lr-stage4 {lr_stage4}")
        if not set(attn_loss_stages) <= {1, 2, 3}:
            raise HadrefError(f"--attn-loss-stages: expected stage numbers among 1, 2, 3 (stage 4 "
                              f"is output loss only), got {list(attn_loss_stages)}")
        ad = {k: attn_loss and k in attn_loss_stages for k in (1, 2, 3)}
        self.gamma = float(gamma)
        n1 = steps_until(c_start, c_mid, gamma)
        n2 = steps_until(c_mid, c_end, gamma)
        if tanh:
            stages = [Stage(1, "tanh1", n1, lr, ad[1], c_start),
                      Stage(2, "tanh2", n2, lr, ad[2], c_mid)]
        else:  # w/o Tanh: the same number of iterations, binarized with the STE
            stages = [Stage(1, "ste", n1, lr, ad[1]), Stage(2, "ste", n2, lr, ad[2])]
        stages += [Stage(3, "ste", int(stage3_steps), lr_stage3, ad[3]),
                   Stage(4, "ste", int(stage4_steps), lr_stage4, False)]
        self.stages = stages

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def locate(self, step: int) -> tuple[Stage, int]:
        """Global step (0-based) -> (its stage, the step within that stage)."""
        for stage in self.stages:
            if step < stage.steps:
                return stage, step
            step -= stage.steps
        raise IndexError("step past the end of the schedule")

    def c_at(self, step: int) -> float | None:
        """c used by the forward of global step ``step`` (None in STE stages)."""
        stage, j = self.locate(step)
        return None if stage.c0 is None else stage.c0 * self.gamma ** j

    def stage_end(self, step: int) -> bool:
        """True when ``step`` is the last step of its stage."""
        stage, j = self.locate(step)
        return j == stage.steps - 1
