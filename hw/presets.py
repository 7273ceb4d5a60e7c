"""Named design points: ``paper`` (fitted to the paper's table) and ``first-principles``.

``paper``: the values of ``tables/paper.toml`` [preset], found by
:func:`hadref.hw.fit.fit_paper` (each value and how it was fitted: hw/fit.py, docs/hw.md).

``first-principles``: the same design choices (node, clock, lanes, N, readout, top-N,
softmax lanes) with every constant from the published tables: CACTI's 292 F^2 CAM cell,
the C*V^2-scaled 0.18 um CAM search energy, A V lanes built only for the N busy rows, and
no calibration. Side by side with ``paper`` it shows which numbers the published
constants explain and which they do not.
"""

from __future__ import annotations

from hadref.errors import HadrefError

from .fit import PAPER_TABLE_FILE
from .model import Design
from .tables import read_table

PRESETS = ("paper", "first-principles")

_INT_KEYS = ("seq", "dim", "heads", "top_n", "av_rows_provisioned", "mac_lanes",
             "softmax_lanes")
_FLOAT_KEYS = ("node_nm", "clock_hz", "cam_cell_f2", "cam_search_fj_per_bit")
_STR_KEYS = ("accumulate", "readout", "topn", "exp", "qk_impl", "power_mode")


def _paper(path=PAPER_TABLE_FILE) -> Design:
    data = read_table(path)
    section = data.get("preset")
    if not isinstance(section, dict):
        raise HadrefError(f"{path}: missing key 'preset'")
    kwargs = {}
    for key, value in section.items():
        if key == "calibration":
            kwargs[key] = {k: tuple(float(x) for x in v) for k, v in value.items()}
        elif key in _INT_KEYS:
            kwargs[key] = int(value)
        elif key in _FLOAT_KEYS:
            kwargs[key] = float(value)
        elif key in _STR_KEYS:
            kwargs[key] = str(value)
        else:
            raise HadrefError(f"{path}: unknown key 'preset.{key}'")
    for key in ("seq", "dim", "top_n", "mac_lanes", "clock_hz", "node_nm"):
        if key not in kwargs:
            raise HadrefError(f"{path}: missing key 'preset.{key}'")
    for key, (ka, ke) in kwargs.get("calibration", {}).items():
        if ka <= 0 or ke <= 0:
            raise HadrefError(f"{path}: key 'preset.calibration.{key}': expected factors > 0")
    return Design(name="paper", **kwargs)


def preset(name: str) -> Design:
    """The design point called ``name`` (``paper`` or ``first-principles``)."""
    if name == "paper":
        return _paper()
    if name == "first-principles":
        return _paper().replace(name="first-principles", av_rows_provisioned=None,
                                cam_cell_f2=None, cam_search_fj_per_bit=None, calibration={})
    raise HadrefError(f"--preset {name!r}: expected one of {', '.join(PRESETS)}")
