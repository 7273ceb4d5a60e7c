"""benchmarks/long_context.py on a tiny decoder: every part lands in the JSON and the
markdown, --resume keeps finished parts, cache bytes are counted. (No speed is checked.)"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from test_llama_layers import tiny_model
from test_passkey import TOKENS, char_tokenizer

import hadref
from hadref.engine import passkey as pk

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "long_context.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("long_context_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
