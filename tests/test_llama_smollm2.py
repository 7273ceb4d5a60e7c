"""Real SmolLM2-135M (after `hadref convert smollm2`) against the reference library's
outputs in shared/fixtures/smollm2_reference.*: tokenizer ids exact, logits to 1e-3 on
valid positions, hidden states after layer 1 and at the end, the 4,096-token NLL, the
greedy continuation exactly (KV cache), cached logits equal to the full forward's."""

import numpy as np
import pytest

import hadref
from hadref.engine.llama import LlamaModel


@pytest.fixture(scope="module")
def smollm2(smollm2_h5):
    return hadref.load(smollm2_h5)


def test_file_is_a_decoder_with_tokenizer_and_template(smollm2, smollm2_fixture):
    assert isinstance(smollm2, LlamaModel)
    cfg = smollm2.config
    ref = smollm2_fixture["meta"]["config"]
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim",
                 "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
                 "eos_token_id"):
        assert getattr(cfg, name) == ref[name], name
    assert cfg.rope_theta == ref["rope_parameters"]["rope_theta"]
    assert cfg.rms_norm_eps == pytest.approx(ref["rms_norm_eps"], rel=1e-6)
    assert "lm_head.weight" not in smollm2.params
    assert "<|im_start|>" in smollm2.chat_template


def test_tokenizer_reproduces_fixture_ids(smollm2, smollm2_fixture, shared_dir):
    meta = smollm2_fixture["meta"]
    for text, ids in zip(meta["texts"], meta["token_ids"]):
        assert smollm2.tokenizer.encode(text).tolist() == ids
    for row, ids in enumerate(meta["token_ids"]):
        n = len(ids)
        assert smollm2_fixture["input_ids"][row, :n].tolist() == ids
    text = (shared_dir / "seeds" / "001_10f47036e0b8d04a.txt").read_text(encoding="utf-8")
    np.testing.assert_array_equal(smollm2.tokenizer.encode(text)[:4096],
                                  smollm2_fixture["long_input_ids"])
    assert smollm2.tokenizer.decode(smollm2_fixture["greedy_continuation"]) == meta["greedy_text"]
    # special tokens written in the text are single ids (the chat template relies on it)
    assert smollm2.tokenizer.encode("<|im_start|>user").tolist()[0] == 1


def test_logits_and_hidden_states_match_reference(smollm2, smollm2_fixture):
    f = smollm2_fixture
    out = smollm2.forward(f["input_ids"], f["attention_mask"], output_hidden_states=True)
    assert out.logits.dtype == np.float32 and out.logits.shape == (3, 18, 49152)
    valid = f["attention_mask"].astype(bool)
    assert np.abs(out.logits - f["logits"])[valid].max() <= 1e-3
    assert len(out.hidden_states) == 31
    assert np.abs(out.hidden_states[1] - f["hidden_layer1"])[valid].max() <= 1e-4
    assert np.abs(out.last_hidden_state - f["hidden_last"])[valid].max() <= 1e-4


def test_long_context_nll_and_last_logits(smollm2, smollm2_fixture):
    """4,096 tokens: per-token NLL (logits formed 512 rows at a time), and the last 16
    positions' logits and hidden states (RoPE far from 0)."""
    f = smollm2_fixture
    ids = f["long_input_ids"]
    out = smollm2.forward(ids[None], compute_logits=False)
    normed = out.last_hidden_state[0]
    assert np.abs(normed[-16:] - f["long_hidden_last16"]).max() <= 1e-3
    assert np.abs(smollm2.logits_of(normed[-16:]) - f["long_logits_last16"]).max() <= 1e-3
    logits = np.concatenate([smollm2.logits_of(normed[s:s + 512]) for s in range(0, 4095, 512)])
    logits = logits[:4095].astype(np.float64)
    top = logits.max(-1)
    lse = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
    nll = lse - logits[np.arange(4095), ids[1:]]
    ref = f["long_token_nll"].astype(np.float64)
    assert abs(nll.mean() - ref.mean()) <= 1e-3
    assert np.abs(nll - ref).max() <= 1e-2
    assert np.exp(nll[:512].mean()) == pytest.approx(33.3, abs=0.05)
    assert np.exp(nll[-512:].mean()) == pytest.approx(8.08, abs=0.01)


def test_greedy_continuation_with_kv_cache(smollm2, smollm2_fixture):
    f = smollm2_fixture
    new = smollm2.generate(f["greedy_prompt"], 16)
    assert new.tolist() == f["greedy_continuation"].tolist()


def test_cached_decoding_equals_full_forward(smollm2, smollm2_fixture):
    f = smollm2_fixture
    seq = np.concatenate([f["greedy_prompt"], f["greedy_continuation"][:6]])
    cache = smollm2.new_kv_cache(len(seq))
    logits = [smollm2.step(seq[None, :5], cache)[0]]
    for t in range(5, len(seq)):
        logits.append(smollm2.step(seq[None, t:t + 1], cache)[0])
    full = smollm2.forward(seq[None]).logits[0, 4:]
    assert np.abs(np.stack(logits) - full).max() <= 1e-3


def test_generate_and_perplexity_commands(smollm2_h5, smollm2_fixture, smollm2, tmp_path):
    import json

    from click.testing import CliRunner

    from hadref.cli import main

    runner = CliRunner()
    meta = smollm2_fixture["meta"]
    result = runner.invoke(main, ["generate", str(smollm2_h5), "--prompt", meta["texts"][0],
                                  "--max-new-tokens", "16"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(meta["texts"][0] + meta["greedy_text"] + "\n")
    assert "tokens/s decoding" in result.output
    result = runner.invoke(main, ["generate", str(smollm2_h5), "--prompt",
                                  "What is the capital of France?", "--chat",
                                  "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    text = tmp_path / "start.txt"  # the first 1,100 tokens of the fixture's long text
    text.write_text(smollm2.tokenizer.decode(smollm2_fixture["long_input_ids"][:1100]))
    result = runner.invoke(main, ["perplexity", str(smollm2_h5), "--text", str(text), "--seq",
                                  "512", "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)["lengths"][0]
    assert first["seq"] == 512 and first["windows"] == 2 and first["scored"] == 2 * 511
    # window 0 is the fixture's first 512 tokens
    ref = smollm2_fixture["long_token_nll"].astype(np.float64)
    window1 = smollm2.token_nll(smollm2_fixture["long_input_ids"][512:1024])
    assert first["nll"] == pytest.approx((ref[:511].sum() + window1.sum()) / 1022, abs=1e-3)
    result = runner.invoke(main, ["perplexity", str(smollm2_h5), "--text", str(text), "--seq",
                                  "9000"])
    assert result.exit_code == 2 and "exceed the model's context length (8192)" in result.output
