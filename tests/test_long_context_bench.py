"""benchmarks/long_context.py on a tiny decoder: every part lands in the JSON and the
markdown, --resume keeps finished parts, cache bytes are counted. (No speed is checked.)"""

import ctypes
import json
import sys
import types

import bench_script
import numpy as np
import pytest
from test_llama_layers import tiny_model
from test_passkey import TOKENS, char_tokenizer

import hadref
from hadref.engine import passkey as pk


@pytest.fixture(scope="module")
def bench():
    return bench_script.load("long_context")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lc")
    model = tiny_model(dtype=np.float32, vocab_size=len(TOKENS), max_position_embeddings=1024,
                       eos_token_id=0, bos_token_id=0)
    model.tokenizer = char_tokenizer()
    text = folder / "held_out.txt"
    text.write_text(pk.INTRO + "".join(pk.FILLER * 12), encoding="utf-8")
    return hadref.save(model, folder / "tiny.h5"), text


def test_float_teacher_run_and_resume(bench, files, tmp_path, capsys):
    model_file, text = files
    out, md = tmp_path / "lc.json", tmp_path / "lc.md"
    args = ["--teacher", str(model_file), "--text", str(text), "--tokens", "1024",
            "--seq", "64,150", "--contexts", "100,1024", "--decode-steps", "3",
            "--json", str(out), "--md", str(md)]
    bench.main(args)
    data = json.loads(out.read_text())
    teacher = data["models"]["teacher"]
    assert [r["seq"] for r in teacher["perplexity"]["lengths"]] == [64, 150]
    assert teacher["perplexity"]["tokens"] == 1024
    assert teacher["perplexity"]["lengths"][0]["windows"] == 16
    rows = teacher["speed"]
    # at the context limit (1024 positions) the context leaves room for the decoded tokens
    assert [r["context"] for r in rows] == [100, 1020]
    assert [r["asked_context"] for r in rows] == [100, 1024]
    cfg = hadref.load(model_file).config
    float_bytes = cfg.num_hidden_layers * cfg.num_key_value_heads * 2 * cfg.head_dim * 4
    assert all(r["cache_bytes_per_token"] == float_bytes for r in rows)
    assert all(r["decode_tok_s"] > 0 and r["prefill_s"] > 0 for r in rows)
    text_md = md.read_text()
    assert "| teacher | 150 |" in text_md and "| teacher | 1020 |" in text_md
    # --resume: nothing left to run, the file is unchanged
    before = out.read_text()
    bench.main(args + ["--resume"])
    assert out.read_text() == before
    assert "already in" in capsys.readouterr().out


def test_binarized_teacher_perplexity_is_added_by_resume(bench, files, tmp_path):
    model_file, text = files
    out = tmp_path / "lc.json"
    args = ["--teacher", str(model_file), "--text", str(text), "--tokens", "300",
            "--seq", "64,150", "--parts", "perplexity", "--json", str(out),
            "--sigma-windows", "2", "--sigma-len", "100"]
    bench.main(args)
    first = json.loads(out.read_text())["models"]["teacher"]
    bench.main(args + ["--binarized", "--fixed-top-n", "4", "--resume"])
    data = json.loads(out.read_text())
    assert data["models"]["teacher"] == first  # kept, not rerun
    for label in ("binarized", "binarized N=4"):
        entry = data["models"][label]
        assert entry["info"]["kind"] == "binarized teacher (no distillation)"
        assert len(entry["info"]["sigma_q"]) == 2 and "pydoc_data.topics" in entry["info"]["sigma_text"]
        assert [r["seq"] for r in entry["perplexity"]["lengths"]] == [64, 150]
    assert data["models"]["binarized N=4"]["info"]["top_n"] == 4
    assert data["models"]["binarized"]["info"]["top_n_ratio"] == pytest.approx(0.117)
    # binarizing changes the model: another perplexity than the float teacher's
    assert data["models"]["binarized"]["perplexity"]["lengths"][0]["ppl"] != \
        first["perplexity"]["lengths"][0]["ppl"]
    # other text settings cannot resume
    with pytest.raises(SystemExit, match="other tokens"):
        bench.main([*args[:5], "200", *args[6:], "--resume"])


def test_student_file_speed_and_passkey(bench, files, tmp_path):
    """A HAD student file (had metadata): long_context times it on its packed key cache (half
    the float cache's bytes and less at d = 4: 8 bytes of sign bits per key), and at a fixed N;
    passkey records its stage and N."""
    from cli_run import ok, run

    model_file, text = files
    teacher = hadref.load(model_file)
    student_file = hadref.save(teacher, tmp_path / "student.h5", had={
        "sigma_q": [0.9, 1.1], "sigma_k": [1.2, 0.8], "top_n": 0, "top_n_ratio": 0.2,
        "stage": "4", "settings": {}, "teacher_sha256": "ab" * 32})
    out = tmp_path / "lc.json"
    bench.main(["--teacher", str(model_file), "--student", str(student_file), "--fixed-top-n", "3",
                "--text", str(text), "--tokens", "300", "--seq", "150", "--contexts", "100",
                "--decode-steps", "2", "--json", str(out)])
    models = json.loads(out.read_text())["models"]
    assert set(models) == {"teacher", "student student", "student student N=3"}
    for label in ("student student", "student student N=3"):
        row = models[label]["speed"][0]
        assert row["cache_type"] == "PackedCausalKVCache"
        assert row["cache_bytes_per_token"] < models["teacher"]["speed"][0]["cache_bytes_per_token"]
    assert models["student student N=3"]["info"]["top_n"] == 3
    assert models["student student"]["info"]["top_n_ratio"] == pytest.approx(0.2)
    assert models["student student"]["info"]["top_n_rule"] == "per row"
    assert models["student student N=3"]["info"]["top_n_rule"] is None
    # a results file from before N per row (no top_n_rule: one N per forward) is not
    # resumed as this student's: its rows were measured with another rule
    data = json.loads(out.read_text())
    del data["models"]["student student"]["info"]["top_n_rule"]
    out.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="'student student' was measured with other top_n_rule"):
        bench.main(["--teacher", str(model_file), "--student", str(student_file),
                    "--fixed-top-n", "3", "--text", str(text), "--tokens", "300", "--seq", "150",
                    "--contexts", "100", "--decode-steps", "2", "--json", str(out), "--resume"])
    pk_json = tmp_path / "pk.json"
    ok(run("passkey", student_file, "--lengths", "400", "--depths", "1", "--trials", "1",
           "--quiet", "--json", pk_json))
    s = json.loads(pk_json.read_text())["settings"]
    assert s["model_kind"] == "HAD student, stage 4" and s["top_n"] == 0
    assert s["top_n_ratio"] == pytest.approx(0.2)


def test_interleaved_speed_rounds_and_redo(bench, files, tmp_path):
    model_file, text = files
    out = tmp_path / "lc.json"
    base = ["--teacher", str(model_file), "--binarized", "--sigma-windows", "1", "--sigma-len",
            "100", "--text", str(text), "--tokens", "300", "--seq", "150", "--contexts", "100",
            "--decode-steps", "2", "--parts", "speed", "--json", str(out)]
    bench.main(base)
    single = json.loads(out.read_text())["models"]
    assert "decode_rounds" not in single["teacher"]["speed"][0]
    bench.main(base + ["--speed-rounds", "3", "--redo", "speed", "--resume"])
    models = json.loads(out.read_text())["models"]
    for label in ("teacher", "binarized"):
        row = models[label]["speed"][0]
        assert row["decode_rounds"] == 3 and len(row["decode_tok_s_rounds"]) == 3
        assert row["decode_tok_s"] == pytest.approx(float(np.median(row["decode_tok_s_rounds"])),
                                                    rel=1e-3)
        assert models[label]["when"]["speed"]["interleaved_with"] == ["teacher", "binarized"]
    assert models["binarized"]["speed"][0]["cache_type"] == "PackedCausalKVCache"


class FakeLlamaCpp(types.ModuleType):
    """A stand-in for llama-cpp-python's module (the tests never import llama_cpp): a Llama
    whose eval records the token ids it is fed and whose last logits point at the last token + 1."""

    GGML_TYPE_F16 = 1
    __version__ = "0.0-fake"

    def __init__(self, vocab):
        super().__init__("llama_cpp")
        self.vocab, self.made = vocab, []
        module = self

        class Llama:
            def __init__(self, model_path, **kw):
                self.path, self.kw, self.fed = model_path, kw, []
                self.ctx, self.model = self, object()
                self.logits = (ctypes.c_float * module.vocab)()
                module.made.append(self)

            def n_ctx(self):
                return self.kw["n_ctx"]

            def n_vocab(self):
                return module.vocab

            def eval(self, tokens):
                assert len(self.fed) + len(tokens) <= self.kw["n_ctx"]
                self.fed += tokens
                ctypes.memset(self.logits, 0, ctypes.sizeof(self.logits))
                self.logits[(tokens[-1] + 1) % module.vocab] = 1.0

        self.Llama = Llama

    def llama_get_logits_ith(self, ctx, i):
        assert i == -1
        return ctypes.cast(ctx.logits, ctypes.POINTER(ctypes.c_float))

    def llama_model_desc(self, model, buf, size):
        buf.value = b"fake 1K F32"

    def llama_print_system_info(self):
        return b"AVX512 = 1 | FAKE = 1"


def test_llama_cpp_is_timed_with_the_models_on_the_same_token_ids(bench, files, tmp_path, monkeypatch):
    from test_llama_files import write_gguf

    model_file, text = files
    teacher = hadref.load(model_file)
    cfg = teacher.config
    # a GGUF of the teacher's cache shape (GGUF derives head_dim as hidden / heads)
    same_cache = tiny_model(dtype=np.float32, vocab_size=cfg.vocab_size, max_position_embeddings=1024,
                            hidden_size=cfg.num_attention_heads * cfg.head_dim)
    gguf_file = write_gguf(tmp_path / "tiny.gguf", same_cache, tokenizer=False)
    fake = FakeLlamaCpp(teacher.config.vocab_size)
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    out, md = tmp_path / "lc.json", tmp_path / "lc.md"
    bench.main(["--teacher", str(model_file), "--text", str(text), "--tokens", "300",
                "--contexts", "100,1024", "--decode-steps", "2", "--parts", "speed",
                "--speed-rounds", "2", "--llama-cpp", "--llama-cpp-gguf", str(gguf_file),
                "--json", str(out), "--md", str(md)])
    data = json.loads(out.read_text())
    models = data["models"]
    assert data["llama_cpp"] == {"models": ["llama.cpp", "llama.cpp flash-attn"]}
    assert models["teacher"]["when"]["speed"]["interleaved_with"] == \
        ["teacher", "llama.cpp", "llama.cpp flash-attn"]
    for label, flash in (("llama.cpp", False), ("llama.cpp flash-attn", True)):
        info = models[label]["info"]
        assert info["kind"] == "llama.cpp" and info["flash_attn"] is flash
        assert info["threads"] == info["threads_batch"] == 1 and info["kv_type"] == "f16"
        assert info["n_batch"] == info["n_ubatch"] == 512
        assert info["gguf"]["tensor_types"] == {"F32": len(same_cache.params)}
        assert info["gguf"]["layers"] == cfg.num_hidden_layers
        rows = models[label]["speed"]
        # the same contexts as the teacher's (1024 asked: as many as fit with 2 x 2 decoded)
        assert [r["context"] for r in rows] == [r["context"] for r in models["teacher"]["speed"]]
        assert [r["context"] for r in rows] == [100, 1019]
        assert all(len(r["decode_tok_s_rounds"]) == 2 for r in rows)
        # f16 K and V: half the float teacher's float32 cache
        assert all(2 * r["cache_bytes_per_token"] == models["teacher"]["speed"][0]["cache_bytes_per_token"]
                   for r in rows)
    # every context llama.cpp ran: n_threads 1, f16 cache, the flash setting asked
    assert {(m.kw["n_threads"], m.kw["n_threads_batch"], m.kw["type_k"], m.kw["type_v"],
             m.kw["n_batch"], m.kw["n_ubatch"]) for m in fake.made} == {(1, 1, 1, 1, 512, 512)}
    timed = [m for m in fake.made if m.kw["n_ctx"] == 100 + 2 * 2 + 1]
    assert [m.kw["flash_attn"] for m in timed] == [False, True]
    ids = teacher.tokenizer.encode(pk.INTRO + "".join(pk.FILLER * 12))[:100]
    for m in timed:
        assert m.fed[:100] == [int(t) for t in ids]  # hadref's token ids
        # then the argmax of the last position's logits, fed back one token a step
        assert len(m.fed) == 100 + 2 * 2
        assert all(m.fed[i] == (m.fed[i - 1] + 1) % cfg.vocab_size for i in range(100, 104))
    text_md = md.read_text()
    assert "| llama.cpp | 100 |" in text_md and "| llama.cpp flash-attn | 1019 |" in text_md
    assert "Ratios to llama.cpp (decode tok/s, prefill time):" in text_md
    assert "- teacher at 1019: decoding" in text_md
    teacher_rounds = models["teacher"]["speed"][1]["decode_tok_s_rounds"]
    cpp_rounds = models["llama.cpp"]["speed"][1]["decode_tok_s_rounds"]
    paired = [t / c for t, c in zip(teacher_rounds, cpp_rounds)]
    faster = sum(r > 1 for r in paired)
    median = models["teacher"]["speed"][1]["decode_tok_s"] / models["llama.cpp"]["speed"][1]["decode_tok_s"]
    assert (f"- teacher at 1019: decoding {median:.2f}x (per round {min(paired):.2f}-"
            f"{max(paired):.2f}x, faster in {faster} of 2), prefill") in text_md
    assert "llama-cpp-python 0.0-fake, fake 1K F32, tiny.gguf" in text_md
    assert "flash attention on" in text_md and "AVX512 = 1" in text_md


def test_llama_cpp_skip_reasons_are_recorded(bench, files, tmp_path, monkeypatch):
    model_file, text = files
    out, md = tmp_path / "lc.json", tmp_path / "lc.md"
    base = ["--teacher", str(model_file), "--text", str(text), "--tokens", "300", "--contexts", "100",
            "--decode-steps", "1", "--parts", "speed", "--llama-cpp", "--json", str(out), "--md", str(md)]
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    bench.main(base)
    data = json.loads(out.read_text())
    assert set(data["models"]) == {"teacher"}
    assert data["llama_cpp"]["skipped"].startswith("llama-cpp-python is not importable")
    assert "Not run: llama-cpp-python is not importable" in md.read_text()
    monkeypatch.setitem(sys.modules, "llama_cpp", FakeLlamaCpp(8))
    bench.main(base + ["--llama-cpp-gguf", str(tmp_path / "none.gguf"), "--resume"])
    data = json.loads(out.read_text())
    assert data["llama_cpp"]["skipped"] == f"--llama-cpp-gguf: {tmp_path / 'none.gguf'}: no such file"
    assert set(data["models"]) == {"teacher"}
