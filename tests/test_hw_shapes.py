"""`hadref hw --model FILE.h5`: attention shapes from BERT and decoder model files
(metadata only); bad files and options are one-line errors (exit 2)."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from hadref.cli import main
from hadref.errors import HadrefError
from hadref.hw import evaluate, preset
from hadref.hw.shapes import TOP_N_FRACTION, model_design, read_shapes

SMOLLM2 = {"model_type": "llama", "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "hidden_size": 576,
           "max_position_embeddings": 8192, "vocab_size": 49152}
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "max_position_embeddings": 512, "intermediate_size": 1536, "vocab_size": 30522}


def make(path, config, had=None, raw_config=None):
    """A metadata-only hadref file (the hardware model never reads the weights)."""
    with h5py.File(path, "w") as f:
        f.attrs["format_version"] = 1
        if raw_config is not None:
            f.attrs["config"] = raw_config
        elif config is not None:
            f.attrs["config"] = json.dumps(config)
        if had is not None:
            g = f.create_group("had")
            layers = had.pop("layers", config["num_hidden_layers"])
            for key, value in had.items():
                g.attrs[key] = value
            g.create_dataset("sigma_q", data=np.ones(layers))
            g.create_dataset("sigma_k", data=np.ones(layers))
    return path


def run(*args):
    return CliRunner().invoke(main, ["hw", *args])


def test_llama_shapes(tmp_path):
    s = read_shapes(make(tmp_path / "smol.h5", SMOLLM2))
    assert (s.family, s.layers, s.heads, s.kv_heads, s.dim, s.max_positions, s.top_n) == \
        ("llama", 30, 9, 3, 64, 8192, None)


def test_llama_defaults_follow_llamaconfig(tmp_path):
    cfg = {k: v for k, v in SMOLLM2.items() if k not in ("num_key_value_heads", "head_dim")}
    s = read_shapes(make(tmp_path / "m.h5", cfg))
    assert (s.kv_heads, s.dim) == (9, 576 // 9)


def test_bert_shapes_and_had_student(tmp_path):
    s = read_shapes(make(tmp_path / "bert.h5", MINILM, had={"top_n": 30, "ste_t": 1.0}))
    assert (s.family, s.layers, s.heads, s.kv_heads, s.dim, s.max_positions, s.top_n) == \
        ("bert", 6, 12, 12, 32, 512, 30)


def test_model_design_top_n_sources(tmp_path):
    base = preset("paper")
    smol = read_shapes(make(tmp_path / "smol.h5", SMOLLM2))
    d, src = model_design(base, smol, 8192)
    assert (d.seq, d.top_n, src) == (8192, round(0.117 * 8192), "0.117 x seq") == \
        (8192, 958, "0.117 x seq")
    assert (d.layers, d.heads, d.n_kv_heads, d.dim, d.group) == (30, 9, 3, 64, 3)
    d, src = model_design(base, smol, 2048, top_n=100)
    assert (d.top_n, src) == (100, "option")
    d, src = model_design(base, smol)                      # n defaults to the context
    assert (d.seq, d.top_n) == (8192, 958)
    student = read_shapes(make(tmp_path / "s.h5", SMOLLM2, had={"top_n": 64}))
    d, src = model_design(base, student, 2048)
    assert (d.top_n, src) == (64, "file")
    assert TOP_N_FRACTION == 0.117


def test_cli_model_matches_explicit_shapes(tmp_path):
    path = make(tmp_path / "smol.h5", SMOLLM2)
    data = json.loads(run("--model", str(path), "--seq", "8192", "--json").output)
    s = data["settings"]
    assert (s["layers"], s["heads"], s["kv_heads"], s["dim"], s["seq"], s["top_n"]) == \
        (30, 9, 3, 64, 8192, 958)
    assert (s["top_n_source"], s["model_family"], s["max_position_embeddings"]) == \
        ("0.117 x seq", "llama", 8192)
    # the same design given by hand (with --model the softmax keeps pace with the lanes)
    by_hand = preset("paper").replace(seq=8192, top_n=958, av_rows_provisioned=958,
                                      layers=30, heads=9, kv_heads=3, dim=64,
                                      softmax_lanes=None, storage=True)
    r = evaluate(by_hand)
    assert data["had"]["total"]["area_m2"] == pytest.approx(r.had["total"].area)
    assert data["sa"]["total"]["energy_j_per_query"] == pytest.approx(
        r.sa["total"].energy_per_query)


def test_cli_model_text_and_sweep(tmp_path):
    path = make(tmp_path / "bert.h5", MINILM, had={"top_n": 30})
    res = run("--model", str(path), "--seq", "256")
    assert res.exit_code == 0, res.output
    assert "N = 30 from file" in res.output and "layers=6" in res.output
    res = run("sweep", "--model", str(path), "--seq", "128,512", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [d["settings"]["seq"] for d in data] == [128, 512]
    assert [d["settings"]["top_n"] for d in data] == [30, 30]


def _bad_files(tmp_path):
    cases = []
    cases.append(([str(tmp_path / "missing.h5")], "no such file"))
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    cases.append(([str(text)], "not an HDF5 file"))
    cases.append(([str(make(tmp_path / "noconf.h5", None))], "no config attribute"))
    cases.append(([str(make(tmp_path / "badjson.h5", None, raw_config="{oops"))],
                  "attribute config is not valid JSON"))
    cfg = dict(SMOLLM2)
    del cfg["num_attention_heads"]
    cases.append(([str(make(tmp_path / "noheads.h5", cfg))],
                  "missing field 'num_attention_heads'"))
    cases.append(([str(make(tmp_path / "strheads.h5", dict(SMOLLM2, num_attention_heads="9")))],
                  "field 'num_attention_heads' = '9': expected a positive integer"))
    cases.append(([str(make(tmp_path / "gpt.h5", dict(SMOLLM2, model_type="gpt2")))],
                  "field 'model_type' = 'gpt2'"))
    cases.append(([str(make(tmp_path / "kv.h5", dict(SMOLLM2, num_key_value_heads=4)))],
                  "num_key_value_heads = 4 does not divide num_attention_heads = 9"))
    cases.append(([str(make(tmp_path / "hid.h5", dict(MINILM, hidden_size=385)))],
                  "hidden_size = 385 is not a multiple of num_attention_heads = 12"))
    cases.append(([str(make(tmp_path / "notopn.h5", SMOLLM2, had={"ste_t": 1.0}))],
                  "group had: missing attribute 'top_n'"))
    cases.append(([str(make(tmp_path / "ftopn.h5", SMOLLM2, had={"top_n": 2.5}))],
                  "attribute had/top_n = 2.5: expected a positive integer"))
    cases.append(([str(make(tmp_path / "sig.h5", SMOLLM2, had={"top_n": 30, "layers": 4}))],
                  "dataset had/sigma_q has shape (4,): expected (30,)"))
    smol = str(make(tmp_path / "ok.h5", SMOLLM2))
    cases.append(([smol, "--seq", "16384"],
                  "--seq 16384: exceeds " + smol + "'s max_position_embeddings (8192)"))
    cases.append(([smol, "--heads", "4"], "--heads: not with --model"))
    cases.append(([smol, "--seq", "100", "--top-n", "200"], "--top-n 200 (option): expected at "
                                                           "most --seq (100)"))
    return cases


def test_bad_model_files_and_options_exit_2_with_one_line(tmp_path):
    for args, needle in _bad_files(tmp_path):
        res = run("--model", *args)
        err = res.output.strip()
        assert res.exit_code == 2, (args, res.output)
        assert err.startswith("hadref: error: ") and needle in err and "\n" not in err, \
            (needle, err)
        assert "Traceback" not in res.output


def test_sweep_top_n_mode_not_with_model(tmp_path):
    path = make(tmp_path / "smol.h5", SMOLLM2)
    res = run("sweep", "--model", str(path), "--seq", "1024", "--top-n-mode", "fixed")
    assert res.exit_code == 2
    assert "--top-n-mode: not with --model" in res.output


def test_read_shapes_raises_hadref_error(tmp_path):
    with pytest.raises(HadrefError, match="no such file"):
        read_shapes(tmp_path / "nope.h5")


@pytest.mark.parametrize("seq,figures", [
    (2048, {"had_qk_mm2": 93.75, "sa_storage_mm2": 78.13, "sa_total_mm2": 111.52,
            "had_total_mm2": 135.34, "sa_leak_w": 68.77, "had_leak_w": 38.68,
            "sa_cycles": 39991, "had_cycles": 30164, "sa_mj": 1.665, "had_mj": 0.826,
            "sa_dyn_uj": 246.1, "had_dyn_uj": 27.52}),
    (8192, {"had_qk_mm2": 374.98, "sa_storage_mm2": 312.51, "sa_total_mm2": 345.90,
            "had_total_mm2": 535.47, "sa_leak_w": 275.08, "had_leak_w": 154.73,
            "sa_cycles": 159866, "had_cycles": 117988, "sa_mj": 23.67, "had_mj": 12.87,
            "sa_dyn_uj": 984.3, "had_dyn_uj": 109.8}),
])
def test_smollm2_worked_example_in_docs(tmp_path, seq, figures):
    """The figures of docs/hw.md section 11 (kept in step with the model by this test)."""
    path = make(tmp_path / "smol.h5", SMOLLM2)
    data = json.loads(run("--model", str(path), "--seq", str(seq), "--json").output)
    dec = data["decode"]
    got = {
        "had_qk_mm2": data["had"]["qk"]["area_m2"] * 1e6,
        "sa_storage_mm2": data["sa"]["storage"]["area_m2"] * 1e6,
        "sa_total_mm2": data["sa"]["total"]["area_m2"] * 1e6,
        "had_total_mm2": data["had"]["total"]["area_m2"] * 1e6,
        "sa_leak_w": data["sa"]["total"]["leakage_w"],
        "had_leak_w": data["had"]["total"]["leakage_w"],
        "sa_cycles": dec["sa"]["components"]["total"]["cycles_per_token"],
        "had_cycles": dec["had"]["components"]["total"]["cycles_per_token"],
        "sa_mj": dec["sa"]["components"]["total"]["energy_j_per_token"] * 1e3,
        "had_mj": dec["had"]["components"]["total"]["energy_j_per_token"] * 1e3,
        "sa_dyn_uj": (dec["sa"]["components"]["total"]["energy_j_per_token"] -
                      dec["sa"]["components"]["leakage"]["energy_j_per_token"]) * 1e6,
        "had_dyn_uj": (dec["had"]["components"]["total"]["energy_j_per_token"] -
                       dec["had"]["components"]["leakage"]["energy_j_per_token"]) * 1e6,
    }
    for key, value in figures.items():
        assert got[key] == pytest.approx(value, rel=6e-4, abs=0), key
