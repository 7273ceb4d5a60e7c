"""Helpers shared by the subcommands."""

import click


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
