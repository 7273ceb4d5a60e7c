"""`hadref bench` on small generated inputs: the figures it prints are present and sane."""

import json

import pytest
from click.testing import CliRunner

from hadref.cli import main


def _run(*args):
    return CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)


def test_bench_json_figures():
    result = _run("--seq", "64,96", "--heads", "2", "--dim", "40", "--repeat", "2",
                  "--recall-rows", "16", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["threads"] >= 1
    rows = data["results"]
    assert [r["seq"] for r in rows] == [64, 96]
    for r in rows:
        assert r["top_n"] == round(0.117 * r["seq"])  # the paper's ratio by default
        for key in ("dense_ms", "had_ms", "pack_ms", "popcount_topn_ms", "softmax_av_ms",
                    "fused_ms", "fused_levels_ms"):
            assert r[key] > 0
        for key in ("fused_topn_ms", "fused_softmax_av_ms"):  # differences of noisy runs
            assert abs(r[key]) < 10 * r["fused_ms"]
        assert len(r["samples_ms"]["fused_topn"]) == 2
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["had_ms"])
        assert len(r["samples_ms"]["had"]) == 2
        assert r["key_bytes_per_token_packed"] == 2 * 8  # 2 heads x one 64-bit word
        assert r["key_bytes_per_token_float32"] == 2 * 40 * 4
        assert r["dense_extra_bytes"] >= 64 * r["seq"] * 4  # at least one score matrix
        assert 0 <= r["recall_float_topn"] <= 1
        assert r["relative_output_error"] > 0  # random inputs: HAD is not float attention


def test_bench_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    png = tmp_path / "bench.png"
    result = _run("--seq", "48,80", "--heads", "1", "--repeat", "1", "--top-n", "200",
                  "--recall-rows", "8", "--plot", str(png))
    assert result.exit_code == 0, result.output
    for text in ("dense float (NumPy BLAS)", "HAD total", "fused kernel", "popcount levels",
                 "top-N selection", "popcount + top-N", "softmax + AV",
                 "key cache per token: 8 B packed vs 256 B float32", "recall of the float top-200"):
        assert text in result.stdout
    # N >= seq keeps every key, so the top-N sets agree exactly
    assert "recall of the float top-200 set 1.000" in result.stdout
    assert png.stat().st_size > 1000


def test_bench_bad_options_exit_2():
    result = CliRunner().invoke(main, ["bench", "--seq", "0"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["bench", "--seq", "64", "--threads", "100000"])
    assert result.exit_code == 2 and "--threads" in result.output
    result = CliRunner().invoke(main, ["bench", "--top-n", "0"])
    assert result.exit_code == 2
