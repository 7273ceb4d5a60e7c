"""hadref.hw: a CAM-based HAD attention accelerator model against bf16 attention.

Components (:mod:`hadref.hw.components`) have an area, per-action energies and (arrays)
a leakage from published tables (``hw/tables/*.toml``, one per node, each constant with its
source); :func:`evaluate` composes them into the standard-attention (SA) and HAD units for
a :class:`Design` and returns area, energy per query, power, leakage and cycles per block
and the per-token key/value write; :func:`phases` turns that into decode and prefill cost
per token; :func:`read_shapes` takes layers, heads, key heads, d and N from a model file.

>>> from hadref.hw import preset, evaluate, to_dict
>>> result = evaluate(preset("paper"))
>>> round(result.had["total"].power, 2)          # W; the paper's table: 3.301
3.29
>>> custom = preset("first-principles").replace(seq=4096, top_n=480, storage=True)
>>> to_dict(evaluate(custom))["had"]["qk"]["energy_nj_per_query"]   # doctest: +SKIP
"""

from .model import Design, Result, evaluate
from .phases import phases
from .presets import PRESETS, preset
from .report import format_table, sweep, to_dict
from .shapes import read_shapes
from .tables import TechLibrary

__all__ = ["Design", "Result", "evaluate", "phases", "preset", "PRESETS", "to_dict",
           "format_table", "sweep", "read_shapes", "TechLibrary"]
