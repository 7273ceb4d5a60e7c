"""Helpers shared by the subcommands."""

import math

import click


class Finite(click.ParamType):
    """A finite float (NaN and inf refused at the command line); the range of each setting
    is the library's check, so that Python callers get the same rule and message."""

    name = "float"

    def __init__(self, min: float | None = None):
        self.min = min

    def convert(self, value, param, ctx):
        try:
            out = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        if self.min is not None and out < self.min:
            self.fail(f"{out} is below {self.min}.", param, ctx)
        return out


FINITE = Finite()
SEED = click.IntRange(min=0)


def parse_int_list(value: str, option: str) -> list[int]:
    """'256,1024' -> [256, 1024]; a clear error naming the option otherwise."""
    try:
        items = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}",
                                 param_hint=option) from None
    if not items or any(i < 1 for i in items):
        raise click.BadParameter(f"expected positive integers, got {value!r}", param_hint=option)
    return items
