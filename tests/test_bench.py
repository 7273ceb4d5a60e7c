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


def _json_rows(*args, env=None):
    result = CliRunner().invoke(main, ["bench", *args, "--json", "--quiet"], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"]


def _error(*args, env=None):
    result = CliRunner().invoke(main, ["bench", *args], env=env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    return lines[0]


def test_bench_causal_json():
    (r,) = _json_rows("--seq", "40", "--heads", "2", "--dim", "24", "--repeat", "1",
                      "--recall-rows", "8", "--causal")
    assert r["mode"] == "prefill" and r["causal"] is True and r["kv_heads"] == 2
    assert r["dense"] is True and r["dense_skipped"] is None
    assert r["had_ms"] > 0 and r["fused_ms"] > 0 and r["dense_ms"] > 0
    assert 0 <= r["recall_float_topn"] <= 1


def test_bench_no_dense_table():
    result = _run("--seq", "40", "--heads", "1", "--dim", "16", "--repeat", "1",
                  "--recall-rows", "4", "--no-dense", "--quiet")
    assert result.exit_code == 0, result.output
    assert "dense float attention skipped: --no-dense" in result.stdout
    assert "dense float (NumPy BLAS)" not in result.stdout
    assert "HAD total" in result.stdout and "popcount levels" in result.stdout
    (r,) = _json_rows("--seq", "40", "--heads", "1", "--dim", "16", "--repeat", "1",
                      "--recall-rows", "4", "--no-dense")
    assert r["dense"] is False and r["dense_ms"] is None and r["speedup"] is None
    assert r["relative_output_error"] is None and r["had_ms"] > 0


def test_bench_skips_dense_that_does_not_fit():
    from hadref.cli.bench import memory_needed

    need = memory_needed(200, 1, 16, 1, recall_rows=4)
    budget = {"HADREF_BENCH_MEMORY": str(need["had"] + need["dense"] // 2)}
    args = ("--seq", "200", "--heads", "1", "--dim", "16", "--repeat", "1",
            "--recall-rows", "4")
    result = CliRunner().invoke(main, ["bench", *args, "--quiet"], env=budget)
    assert result.exit_code == 0, result.output
    skip_lines = [line for line in result.stdout.splitlines() if "skipped" in line]
    assert len(skip_lines) == 1 and "200 x 200 scores" in skip_lines[0]
    assert "HAD total" in result.stdout
    (r,) = _json_rows(*args, env=budget)
    assert r["dense"] is False and "200 x 200 scores" in r["dense_skipped"]
    assert r["had_ms"] > 0
    # HAD alone does not fit: exit 2 naming --seq
    assert "--seq 200" in _error(*args, env={"HADREF_BENCH_MEMORY": str(need["had"] // 2)})
    assert "HADREF_BENCH_MEMORY" in _error(*args, env={"HADREF_BENCH_MEMORY": "lots"})


def test_bench_decode_json():
    rows = _json_rows("--seq", "48,200", "--heads", "4", "--kv-heads", "2", "--dim", "40",
                      "--repeat", "2", "--decode")
    assert [r["seq"] for r in rows] == [48, 200]
    for r in rows:
        assert r["mode"] == "decode" and r["kv_heads"] == 2
        assert r["top_n"] == round(0.117 * r["seq"])
        assert r["had_ms_per_token"] > 0 and r["dense_ms_per_token"] > 0
        assert len(r["samples_ms"]["had"]) == 2
        assert r["key_bytes_per_token_packed"] == 2 * 8  # 2 key heads x one word
        assert r["key_bytes_per_token_float32"] == 2 * 40 * 4
        assert r["cache_bytes_per_token_float32"] == 2 * 2 * 40 * 4
        assert r["relative_output_error"] > 0
    (r,) = _json_rows("--seq", "48", "--heads", "2", "--dim", "16", "--repeat", "1",
                      "--decode", "--no-dense")
    assert r["dense_ms_per_token"] is None and r["had_ms_per_token"] > 0


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_decode_step_agrees_with_had_attention(kv_heads):
    import numpy as np

    import hadref
    from hadref.cli.bench import _Decode

    rng = np.random.default_rng(kv_heads)
    heads, n, d, top_n = 4, 90, 24, 11
    k, v = (rng.standard_normal((2, kv_heads, n, d), dtype=np.float32) for _ in range(2))
    q = rng.standard_normal((2, heads, 1, d), dtype=np.float32)
    step = _Decode(k, v)
    np.testing.assert_allclose(step.packed(q, top_n), hadref.had_attention(q, k, v, top_n),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(step.dense(q), hadref.float_attention(q, k, v),
                               rtol=1e-5, atol=1e-6)
    # and each query head against its own copy of its group's key head
    k_rep, v_rep = (np.repeat(x, heads // kv_heads, axis=1) for x in (k, v))
    np.testing.assert_allclose(step.packed(q, top_n), hadref.had_attention(q, k_rep, v_rep, top_n),
                               rtol=1e-6, atol=1e-6)


def test_bench_kv_heads_prefill():
    (r,) = _json_rows("--seq", "40", "--heads", "4", "--kv-heads", "2", "--dim", "16",
                      "--repeat", "1", "--recall-rows", "4", "--causal")
    assert r["kv_heads"] == 2 and r["causal"] is True and r["had_ms"] > 0
    assert r["fused_ms"] > 0 and r["popcount_topn_ms"] > 0  # the split and the stages apart
    assert r["key_bytes_per_token_packed"] == 2 * 8
    assert r["relative_output_error"] > 0 and 0 <= r["recall_float_topn"] <= 1


def test_bench_bad_combinations_exit_2():
    assert "--kv-heads" in _error("--seq", "64", "--heads", "4", "--kv-heads", "3")
    assert "--kv-heads" in _error("--seq", "64", "--heads", "2", "--kv-heads", "4")
    assert "--causal" in _error("--seq", "64", "--decode", "--causal")
    assert "--plot" in _error("--seq", "64", "--decode", "--plot", "x.png")
    result = CliRunner().invoke(main, ["bench", "--seq", "64", "--kv-heads", "0"])
    assert result.exit_code == 2 and "--kv-heads" in result.output  # click's range check
