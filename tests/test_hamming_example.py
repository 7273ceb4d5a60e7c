"""examples/embed_attention.py runs and its decode loop agrees with full attention."""

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "embed_attention.py"


def test_embed_attention_example_runs(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "relative output error" in out
    assert "equals full causal HAD attention: True" in out
