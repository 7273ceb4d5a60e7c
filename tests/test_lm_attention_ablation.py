"""benchmarks/lm_attention_ablation.py: the float top-N core against a per-row NumPy
reference (fixed N and N per row, grouped heads, cached decoding), and the script on a tiny
decoder (JSON, --resume, an existing file)."""

import json
import math

import bench_script
import numpy as np
import pytest
from test_llama_layers import tiny_model
from test_passkey import TOKENS, char_tokenizer

import hadref
from hadref.engine import passkey as pk
from hadref.engine.layers.causal_attention import CausalFloatAttentionCore
from hadref.had.kernels.causal import ratio_top_n


@pytest.fixture(scope="module")
def ablation():
    return bench_script.load("lm_attention_ablation")


def _reference(q, k, v, n_of_row):
    """Row by row: causal float scores, the row's n_of_row(i) best keys, softmax, sum."""
    nb, hq, nt, d = q.shape
    g = hq // k.shape[1]
    out = np.zeros_like(q)
    for b in range(nb):
        for h in range(hq):
            for i in range(nt):
                s = k[b, h // g, :i + 1] @ q[b, h, i] / math.sqrt(d)
                keep = np.argsort(-s, kind="stable")[:n_of_row(i)]
                p = np.exp(s[keep] - s[keep].max())
                out[b, h, i] = (p / p.sum()) @ v[b, h // g, keep]
    return out


def _qkv(seed=0, nb=2, hq=4, hkv=2, nt=37, d=8):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((nb, hq, nt, d)), rng.standard_normal((nb, hkv, nt, d)),
            rng.standard_normal((nb, hkv, nt, d)))


@pytest.mark.parametrize("top_n,ratio", [(1, None), (5, None), (None, 0.117), (None, 0.4)])
def test_float_topn_core_matches_a_per_row_reference(ablation, top_n, ratio):
    q, k, v = _qkv()
    core = ablation.FloatTopNCausalCore(top_n=top_n, ratio=ratio or 0.117)
    core.max_block_rows = 8  # several query blocks
    got, cache = core.forward(q, k, v, None, 0)
    def n_of_row(i):
        return min(top_n, i + 1) if top_n else ratio_top_n(ratio, i + 1)
    assert cache is None
    np.testing.assert_allclose(got, _reference(q, k, v, n_of_row), rtol=1e-10, atol=1e-12)


def test_every_key_kept_is_float_attention_and_cached_decoding_matches(ablation):
    q, k, v = _qkv(seed=1)
    full = ablation.FloatTopNCausalCore(top_n=1000)
    want, _ = CausalFloatAttentionCore().forward(q, k, v, None, 0)
    np.testing.assert_allclose(full.forward(q, k, v, None, 0)[0], want, rtol=1e-10, atol=1e-12)
    core = ablation.FloatTopNCausalCore(ratio=0.3)
    whole, _ = core.forward(q, k, v, None, 0)
    cache = core.new_kv_cache(1, q.shape[0], k.shape[1], q.shape[2], q.shape[3], q.dtype)
    parts = [core.forward_cached(q[:, :, :20], k[:, :, :20], v[:, :, :20], cache, 0)]
    for t in range(20, q.shape[2]):
        parts.append(core.forward_cached(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1],
                                         cache, 0))
    np.testing.assert_allclose(np.concatenate(parts, axis=2), whole, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="evaluation only"):
        core.forward(q, k, v, None, 0, train=True)


def test_script_writes_resumes_and_keeps_an_existing_file(ablation, tmp_path, capsys):
    model = tiny_model(dtype=np.float32, vocab_size=len(TOKENS), max_position_embeddings=512,
                       eos_token_id=0, bos_token_id=0)
    model.tokenizer = char_tokenizer()
    path = hadref.save(model, tmp_path / "tiny.h5")
    text = tmp_path / "held_out.txt"
    text.write_text(pk.INTRO + "".join(pk.FILLER * 8), encoding="utf-8")
    out = tmp_path / "ablation.json"
    args = ["--model", str(path), "--text", str(text), "--tokens", "256", "--seq", "64,128",
            "--only", "float,float-topn,float-topn4,sign-all", "--fixed-top-n", "4",
            "--sigma-windows", "2", "--sigma-len", "64",
            "--passkey-lengths", "400", "--trials", "1", "--json", str(out)]
    assert ablation.main(args) == 0
    data = json.loads(out.read_text())
    assert list(data["variants"]) == ["float", "float-topn", "float-topn4", "sign-all"]
    assert data["variants"]["sign-all"]["info"] == {"scores": "signs (hard)", "keys": "all"}
    teacher = data["variants"]["float"]
    assert [r["seq"] for r in teacher["perplexity"]] == [64, 128]
    assert teacher["passkey"]["400"]["trials"] == 5
    # top-N changes the model: its perplexity differs from the teacher's
    assert data["variants"]["float-topn4"]["perplexity"][0]["ppl"] != teacher["perplexity"][0]["ppl"]
    assert "| float-topn4 | float | top 4 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ablation.main(args)  # the file exists and --resume is not given
    with pytest.raises(SystemExit):  # never written over an input
        ablation.main(args[:-1] + [str(text), "--resume"])
    assert text.read_text(encoding="utf-8").startswith(pk.INTRO)
    layers = tmp_path / "layers.json"
    assert ablation.main(args[:-1] + [str(layers), "--only", "sign-all", "--per-layer",
                                      "--sigma-scale", "2", "--passkey-lengths", ""]) == 0
    by_layer = json.loads(layers.read_text())["variants"]
    assert list(by_layer) == ["sign-all", "sign-all-x2"] + [f"sign-topn-layer{i}" for i in range(
        model.config.num_hidden_layers)]
    assert all("passkey" not in r for r in by_layer.values())
    assert len({r["perplexity"][0]["ppl"] for r in by_layer.values()}) == len(by_layer)
    stamp = out.read_text()
    assert ablation.main(args + ["--resume"]) == 0
    assert json.loads(out.read_text())["variants"] == json.loads(stamp)["variants"]


def test_with_attention_core_shares_the_weights_and_leaves_the_model_alone(ablation):
    model = tiny_model(dtype=np.float32)
    core = ablation.FloatTopNCausalCore(top_n=2)
    other = model.with_attention_core(core)
    assert other.attention_core is core and type(model.attention_core) is CausalFloatAttentionCore
    assert other.params is not model.params
    assert all(other.params[n] is model.params[n] for n in model.params)
    ids = np.arange(1, 12) % model.config.vocab_size
    assert not np.allclose(other.forward(ids[None]).logits, model.forward(ids[None]).logits)
