"""Decoder model files: GGUF -> LlamaModel (names, Q/K row permutation, quantized tensors,
tokenizer), our HDF5 round trip, a Hugging Face Llama folder, the CLI commands on a tiny
model, and bad input (one-line errors, exit code 2, nothing overwritten)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_llama_layers import tiny_model

import hadref
from hadref.cli import main
from hadref.engine.bpe_tokenizer import BPETokenizer, render_chat, tokenizer_json_from_vocab
from hadref.engine.gguf import permute_rows, read_gguf
from hadref.engine.io import convert, describe, load, save
from hadref.engine.llama import LlamaModel
from hadref.errors import HadrefError

gguf = pytest.importorskip("gguf", reason="the gguf package is a dependency: pip install gguf")

# a byte-level BPE vocabulary of 23 tokens ("Ġ" is the space, "Ċ" the newline)
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "d", "e", "Ġ", "Ċ",
          "ab", "Ġa", "Ġab", "cd", "1", "2", "3", "s", "y", "t", "m", "u", "r"]
TYPES = [3, 3, 3] + [1] * 20
MERGES = ["Ġ a", "a b", "Ġa b", "c d"]  # by rank: " ab" -> "Ġa" + "b" -> "Ġab"
TEMPLATE = "{{ '<|im_start|>' + message['role'] }}<|im_end|>"
_GGUF_NAMES = {"input_layernorm.weight": "attn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight",
               "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight",
               "self_attn.o_proj.weight": "attn_output.weight",
               "post_attention_layernorm.weight": "ffn_norm.weight",
               "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
               "mlp.down_proj.weight": "ffn_down.weight"}


def gguf_name(name):
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    _, layer, rest = name.split(".", 2)
    return f"blk.{layer}.{_GGUF_NAMES[rest]}"


def write_gguf(path, model, arch="llama", tokenizer=True, types=None):
    """model as a GGUF file the way llama.cpp's converter writes it (Q/K rows permuted);
    types: {hf name: GGMLQuantizationType} for tensors not stored as F32."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(TOKENS)
        w.add_token_types(TYPES)
        w.add_token_merges(MERGES)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_chat_template(TEMPLATE)
    for name, value in model.params.items():
        value = np.asarray(value, np.float32)
        if name.endswith("q_proj.weight"):
            value = permute_rows(value, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            value = permute_rows(value, cfg.num_key_value_heads)
        kind = (types or {}).get(name)
        if kind is None:
            w.add_tensor(gguf_name(name), np.ascontiguousarray(value))
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(value, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny32(**kw):
    # head_dim 32 and hidden 64: rows a multiple of the 32-value quantization blocks
    return tiny_model(seed=1, dtype=np.float32, hidden_size=64, head_dim=32, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, **kw)


def test_gguf_reads_back_the_model(tmp_path):
    model = tiny32()
    read = read_gguf(write_gguf(tmp_path / "tiny.gguf", model))
    assert isinstance(read, LlamaModel)
    got, want = read.config.to_dict(), model.config.to_dict()
    assert got.pop("rms_norm_eps") == pytest.approx(want.pop("rms_norm_eps"), rel=1e-7)  # float32
    assert got == want
    for name, value in model.params.items():
        np.testing.assert_array_equal(read.params[name], value, err_msg=name)
    assert read.chat_template == TEMPLATE
    assert read.tokenizer.encode("ab ab cd").tolist() == [10, 12, 8, 13]
    assert read.tokenizer.encode("<|im_start|>a123").tolist() == [1, 3, 14, 15, 16]
    assert read.tokenizer.decode([10, 12, 8, 13]) == "ab ab cd"


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1"])
def test_gguf_dequantizes(tmp_path, kind):
    model = tiny32()
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    name = "layers.0.mlp.up_proj.weight"
    read = read_gguf(write_gguf(tmp_path / "q.gguf", model, types={name: qtype}))
    expected = gguf.quants.dequantize(gguf.quants.quantize(model.params[name], qtype), qtype)
    np.testing.assert_array_equal(read.params[name], expected)
    step = {"Q8_0": 0.02, "Q4_1": 0.3}[kind]  # the quantization error of N(0, 0.5) weights
    assert np.abs(read.params[name] - model.params[name]).max() < step


def test_hdf5_round_trip_and_info(tmp_path):
    model = read_gguf(write_gguf(tmp_path / "tiny.gguf", tiny32()))
    path = save(model, tmp_path / "tiny.h5")
    again = hadref.load(path)
    assert isinstance(again, LlamaModel)
    for name, value in model.params.items():
        assert again.params[name].tobytes() == value.tobytes(), name
    assert again.tokenizer.json == model.tokenizer.json and again.chat_template == TEMPLATE
    import h5py

    with h5py.File(path) as f:
        assert json.loads(f.attrs["config"])["model_type"] == "llama"
        assert "embed_tokens.weight" in f["params"] and "lm_head.weight" not in f["params"]
    info = describe(path)
    assert info["family"] == "llama" and info["parameters"] == model.num_parameters()
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0 and "llama (decoder)" in result.output
    # an untied head is stored and read back
    untied = tiny_model(dtype=np.float32, tie_word_embeddings=False)
    back = hadref.load(save(untied, tmp_path / "untied.h5"))
    np.testing.assert_array_equal(back.params["lm_head.weight"], untied.params["lm_head.weight"])


def test_hugging_face_folder(tmp_path):
    from safetensors.numpy import save_file

    model = tiny_model(dtype=np.float32)
    folder = tmp_path / "hf"
    folder.mkdir()
    cfg = model.config.to_dict()
    hf_cfg = {k: v for k, v in cfg.items() if k != "rope_theta"}
    hf_cfg.update(architectures=["LlamaForCausalLM"], hidden_act="silu", attention_bias=False,
                  rope_parameters={"rope_theta": cfg["rope_theta"], "rope_type": "default"})
    (folder / "config.json").write_text(json.dumps(hf_cfg))
    tensors = {f"model.{n}": v for n, v in model.params.items()}
    tensors["lm_head.weight"] = model.params["embed_tokens.weight"].copy()  # tied: dropped
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(tokenizer_json_from_vocab(TOKENS, MERGES, TYPES, "smollm"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(tmp_path / "hf.h5")])
    assert result.exit_code == 0, result.output
    read = load(tmp_path / "hf.h5")
    assert read.config.to_dict() == model.config.to_dict()
    for name, value in model.params.items():
        np.testing.assert_array_equal(read.params[name], value, err_msg=name)
    assert read.chat_template == TEMPLATE and read.tokenizer.encode("ab").tolist() == [10]
    # a tokenizer with ids past the embedding table: an error naming the file, not an
    # IndexError in the first forward
    extra = [f"x{i}" for i in range(model.config.vocab_size + 1 - len(TOKENS))]
    (folder / "tokenizer.json").write_text(
        tokenizer_json_from_vocab(TOKENS + extra, MERGES, TYPES + [1] * len(extra), "smollm"))
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(tmp_path / "big.h5")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"the tokenizer has ids up to {model.config.vocab_size}, the embedding table only" \
        in result.output


@pytest.fixture
def tiny_h5(tmp_path):
    return convert(write_gguf(tmp_path / "tiny.gguf", tiny32()), tmp_path / "tiny.h5")


def test_generate_and_perplexity_commands(tiny_h5, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", str(tiny_h5), "--prompt", "ab ab",
                                  "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ab ab") and "tokens/s" in result.output
    model = load(tiny_h5)
    new = model.generate(model.tokenizer.encode("ab ab"), 5)
    assert result.output.startswith("ab ab" + model.tokenizer.decode(new) + "\n")
    text = tmp_path / "text.txt"
    text.write_text("ab cd ab ab 123 abcd " * 10)
    result = runner.invoke(main, ["perplexity", str(tiny_h5), "--text", str(text), "--seq",
                                  "8,16", "--stride", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    ids = model.tokenizer.encode(text.read_text())
    assert data["tokens"] == ids.size
    first = data["lengths"][0]
    assert first["seq"] == 8 and first["windows"] == (ids.size - 8) // 4 + 1
    nll = model.token_nll(ids[:8])
    assert first["first512"]["nll"] == pytest.approx(np.mean(
        [model.token_nll(ids[s:s + 8]).mean() for s in range(0, ids.size - 7, 4)]), rel=1e-9)
    assert first["scored"] == first["windows"] * 7 and nll.shape == (7,)
    assert data["lengths"][1]["ppl"] == pytest.approx(np.exp(data["lengths"][1]["nll"]))
    result = runner.invoke(main, ["perplexity", str(tiny_h5), "--text", str(text)])
    assert result.exit_code == 2 and "exceed" in result.output


def _error(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("hadref: error: "), result.output
    return lines[0]


def test_bad_gguf_files_are_one_line_errors_and_overwrite_nothing(tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"keep me")
    model = tiny32()
    good = write_gguf(tmp_path / "good.gguf", model)
    assert "file exists" in _error(["convert", str(good), "-o", str(out)])

    def _error_overwriting(args):  # even with --overwrite, a failed convert keeps out
        return _error(args + ["--overwrite"])

    other = write_gguf(tmp_path / "gpt2.gguf", model, arch="gpt2")
    msg = _error_overwriting(["convert", str(other), "-o", str(out)])
    assert "architecture 'gpt2' is not supported" in msg

    q5 = write_gguf(tmp_path / "q5.gguf", model,
                    types={"layers.0.mlp.up_proj.weight": gguf.GGMLQuantizationType.Q5_0})
    msg = _error_overwriting(["convert", str(q5), "-o", str(out)])
    assert "blk.0.ffn_up.weight has type Q5_0" in msg and "hadref reads" in msg

    cut = tmp_path / "cut.gguf"
    data = good.read_bytes()
    for size in (len(data) - 100, len(data) // 2, 30):
        cut.write_bytes(data[:size])
        assert str(cut) in _error_overwriting(["convert", str(cut), "-o", str(out)])

    notok = write_gguf(tmp_path / "notok.gguf", model, tokenizer=False)
    assert "no tokenizer in the metadata" in _error_overwriting(["convert", str(notok), "-o", str(out)])
    assert "no such file" in _error_overwriting(["convert", str(tmp_path / "nope.gguf"), "-o", str(out)])
    assert out.read_bytes() == b"keep me"


def test_bad_generate_input(tiny_h5):
    assert "empty prompt" in _error(["generate", str(tiny_h5), "--prompt", ""])
    msg = _error(["generate", str(tiny_h5), "--prompt", "ab", "--max-new-tokens", "40"])
    assert "exceed the context length (16)" in msg
    model = load(tiny_h5)
    model.chat_template = None
    bare = save(model, tiny_h5.with_name("bare.h5"))
    assert "no chat template" in _error(["generate", str(bare), "--prompt", "ab", "--chat"])
    model.chat_template = "{{ messages }}"
    other = save(model, tiny_h5.with_name("other.h5"))
    assert "not a ChatML template" in _error(["generate", str(other), "--prompt", "ab", "--chat"])


def test_render_chat():
    smol = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' "
            "%}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
            " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}")
    assert render_chat(smol, "Hi?") == ("<|im_start|>system\nYou are SmolLM<|im_end|>\n"
                                        "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(HadrefError, match="no chat template"):
        render_chat(None, "Hi")


def test_tokenizer_rejects_bad_merges():
    with pytest.raises(HadrefError, match="merge 0"):
        tokenizer_json_from_vocab(TOKENS, ["abc"], TYPES)
    with pytest.raises(HadrefError, match="pre-tokenizer 'qwen2'"):
        tokenizer_json_from_vocab(TOKENS, MERGES, TYPES, "qwen2")
    assert BPETokenizer(tokenizer_json_from_vocab(TOKENS, MERGES)).encode("ab").tolist() == [10]
