"""Passkey retrieval (hadref.engine.passkey, ``hadref passkey``): the prompt has the asked
length and puts the key at the asked depth, scoring, the CLI's JSON (written after every
trial, atomically), resume after a crash, bad options; SmolLM2's tokenizer when installed."""

import json

import numpy as np
import pytest
from cli_run import error, ok, run
from test_llama_layers import tiny_model

import hadref
from hadref.engine import passkey as pk
from hadref.engine.bpe_tokenizer import BPETokenizer, tokenizer_json_from_vocab

# a character-level byte-level BPE vocabulary (no merges) of every character of the prompt
_CHARS = sorted(set(pk.INTRO + "".join(pk.FILLER) + pk.QUESTION + pk.needle("0123456789")))
TOKENS = ["<|endoftext|>"] + [("Ġ" if c == " " else c) for c in _CHARS]


def char_tokenizer():
    return BPETokenizer(tokenizer_json_from_vocab(TOKENS, [], [3] + [1] * (len(TOKENS) - 1),
                                                  pre="smollm"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = tiny_model(dtype=np.float32, vocab_size=len(TOKENS), max_position_embeddings=1024,
                       eos_token_id=0, bos_token_id=0)
    model.tokenizer = char_tokenizer()
    return hadref.save(model, tmp_path_factory.mktemp("model") / "tiny.h5")


class Oracle:
    """A stand-in model whose greedy continuation is the key found in the prompt (or, with
    wrong=True, another number); it counts its calls."""

    def __init__(self, tokenizer, wrong=False):
        self.tokenizer, self.wrong, self.calls = tokenizer, wrong, 0

    def generate(self, ids, max_new_tokens, temperature=0.0, stop_at_eos=True, stats=None):
        self.calls += 1
        text = self.tokenizer.decode(ids)
        key = text.split("The pass key is ")[1][:5]
        if self.wrong:
            key = str(int(key) + 1)
        return self.tokenizer.encode(" " + key + ".")[:max_new_tokens]


@pytest.mark.parametrize("length", [400, 555, 900])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.75, 1.0])
def test_prompt_has_the_length_and_the_depth(length, depth):
    tok = char_tokenizer()
    builder = pk.PromptBuilder(tok)
    key = pk.trial_key(0, length, depth, 3)
    p = builder.build(length, depth, key)
    longest = max(len(s) for s in builder.sentences)
    assert abs(p.ids.size - length) <= longest / 2 + 1
    # the needle where the ids say, the key in it, the question at the end
    text = tok.decode(p.ids)
    assert tok.decode(p.ids[p.needle_start:p.needle_end]) == pk.needle(key)
    assert text.startswith(pk.INTRO) and text.endswith(pk.QUESTION)
    assert text.count(key) == 2
    # depth: the share of filler tokens before the needle, to within one sentence
    filler = p.filler_before + p.filler_after
    assert filler == p.ids.size - builder.fixed_tokens(key)
    assert abs(p.filler_before - depth * filler) <= longest
    assert p.measured_depth == pytest.approx(depth, abs=longest / filler)


def test_keys_are_deterministic_five_digits_per_trial():
    keys = {pk.trial_key(0, 1024, d, t) for d in pk.depth_grid(5) for t in range(20)}
    assert all(len(k) == 5 and k.isdigit() and k[0] != "0" for k in keys)
    assert len(keys) > 90  # 100 draws from 90,000 keys: nearly all distinct
    assert pk.trial_key(0, 1024, 0.5, 1) == pk.trial_key(0, 1024, 0.5, 1)
    assert pk.trial_key(0, 1024, 0.5, 1) != pk.trial_key(1, 1024, 0.5, 1)
    assert pk.depth_grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0] and pk.depth_grid(1) == [0.5]


def test_scoring():
    assert pk.is_correct(" 74538. Remember", "74538")
    assert pk.is_correct("74538", "74538")
    assert not pk.is_correct(" 7453", "74538")
    assert not pk.is_correct(" 74 538", "74538")
    assert not pk.is_correct(" 84538.", "74538")
    tok = char_tokenizer()
    builder = pk.PromptBuilder(tok)
    good = pk.run_trial(Oracle(tok), builder, 400, 0.5, "12345")
    assert good["correct"] and good["answer"] == " 12345." and good["prompt_tokens"] > 390
    bad = pk.run_trial(Oracle(tok, wrong=True), builder, 400, 0.5, "12345")
    assert not bad["correct"] and bad["answer"] == " 12346."


def test_run_grid_summary_and_table():
    tok = char_tokenizer()
    settings = {"lengths": [400, 500], "depths": [0.0, 1.0], "trials": 3, "seed": 0,
                "max_new_tokens": 8}
    run_ = pk.PasskeyRun(settings)
    oracle = Oracle(tok)
    summary = run_.run(oracle, pk.PromptBuilder(tok))
    assert oracle.calls == 12 and summary["complete"]
    assert summary["by_length"]["400"] == {"trials": 6, "correct": 6, "accuracy": 1.0}
    assert [c["accuracy"] for c in summary["by_cell"]] == [1.0] * 4
    table = run_.table()
    assert "100%" in table and "400" in table and "d=1" in table


def test_cli_writes_json_and_a_table(model_file, tmp_path):
    out = tmp_path / "pk.json"
    r = ok(run("passkey", model_file, "--lengths", "400,500", "--depths", "0,0.5", "--trials",
               "2", "--json", out))
    assert "tokens" in r.output and f"wrote {out}" in r.output
    data = json.loads(out.read_text())
    assert data["format"] == pk.FORMAT and data["complete"]
    assert [c["name"] for c in data["cells"]] == ["400@0.000000", "400@0.500000",
                                                  "500@0.000000", "500@0.500000"]
    assert all(len(c["results"]) == 2 for c in data["cells"])
    first = data["cells"][0]["results"][0]
    assert set(first) >= {"key", "answer", "correct", "prompt_tokens", "trial", "wall_s"}
    assert abs(first["prompt_tokens"] - 400) <= 12
    assert data["settings"]["model_kind"] == "float"
    assert set(data["by_length"]) == {"400", "500"}


def _timeless(data):
    for c in data["cells"]:
        for r in c["results"]:
            for k in ("wall_s", "prefill_s", "decode_s"):
                r.pop(k)
    return data["cells"], data["by_cell"], data["by_length"]


def test_crash_and_resume_gives_the_same_results(model_file, tmp_path, monkeypatch):
    args = ["passkey", model_file, "--lengths", "400,500", "--depths", "3", "--trials", "2",
            "--quiet"]
    whole = tmp_path / "whole.json"
    ok(run(*args, "--json", whole))
    # a run that dies in its 4th trial keeps the three finished ones on disk
    out = tmp_path / "pk.json"
    real, calls = pk.run_trial, []

    def dying(*a, **kw):
        calls.append(a[2:4])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(pk, "run_trial", dying)
    crashed = run(*args, "--json", out)
    assert crashed.exit_code != 0
    saved = json.loads(out.read_text())
    assert not saved["complete"]
    assert [len(c["results"]) for c in saved["cells"]] == [2, 1]
    assert not list(tmp_path.glob(".pk.json*"))  # no temporary file left
    # a rerun without --resume refuses to replace it
    error(run(*args, "--json", out), "file exists")
    # --resume runs only the 9 missing trials (12 in all), starting where it stopped
    calls.clear()
    monkeypatch.setattr(pk, "run_trial", lambda *a, **kw: (calls.append(a[2:4]), real(*a, **kw))[1])
    ok(run(*args, "--json", out, "--resume"))
    assert len(calls) == 9 and calls[0] == (400, 0.5)
    assert _timeless(json.loads(out.read_text())) == _timeless(json.loads(whole.read_text()))
    # resuming a finished run does nothing
    calls.clear()
    ok(run(*args, "--json", out, "--resume"))
    assert calls == []


def test_json_is_written_atomically(model_file, tmp_path, monkeypatch):
    out = tmp_path / "pk.json"
    args = ["passkey", model_file, "--lengths", "400", "--depths", "1", "--trials", "2",
            "--quiet", "--json", out]
    ok(run(*args))
    before = out.read_bytes()
    real_dumps, n = json.dumps, []

    def failing(*a, **kw):
        n.append(1)
        if len(n) == 2:
            raise OSError("disk full")
        return real_dumps(*a, **kw)

    monkeypatch.setattr(pk.json, "dumps", failing)
    assert run(*args[:-2], "--json", out, "--overwrite").exit_code != 0
    # the first trial's save replaced the file whole; the failed second left it as it was
    after = json.loads(out.read_text())
    assert after["cells"][0]["results"] and len(after["cells"][0]["results"]) == 1
    assert out.read_bytes() != before
    assert not list(tmp_path.glob(".pk.json*"))


@pytest.mark.parametrize("extra, message", [
    (["--depths", "1.5"], "--depths"),
    (["--depths", "x"], "--depths"),
    (["--depths", "0,0"], "--depths"),
    (["--lengths", "0"], "--lengths"),
    (["--lengths", "2000"], "exceed the model's context length (1024)"),
    (["--lengths", "250"], "too short"),
    (["--lengths", "1015"], "make prompts of up to"),
    (["--trials", "0"], "--trials"),
    (["--resume"], "--resume: needs --json"),
    (["--top-n", "4"], "only with --binarize"),
    (["--binarize", "--top-n", "4", "--top-n-ratio", "0.1"], "give one"),
])
def test_bad_options_exit_2(model_file, extra, message):
    r = error(run("passkey", model_file, "--lengths", "400", *extra), message)
    assert len([line for line in r.output.splitlines() if line.startswith(("Error", "hadref:"))]) == 1


def test_bad_files_exit_2(model_file, tmp_path):
    out = tmp_path / "pk.json"
    error(run("passkey", tmp_path / "none.h5", "--lengths", "400"), "no such file")
    error(run("passkey", model_file, "--json", out, "--resume"), "does not exist")
    error(run("passkey", model_file, "--json", model_file), "same file")
    out.write_text("{}")
    error(run("passkey", model_file, "--lengths", "400", "--json", out, "--resume"),
          "not a hadref passkey results file")
    ok(run("passkey", model_file, "--lengths", "400", "--depths", "1", "--trials", "1",
           "--quiet", "--json", out, "--overwrite"))
    error(run("passkey", model_file, "--lengths", "400", "--depths", "1", "--trials", "2",
              "--json", out, "--resume"), "trials = 1")


def test_smollm2_tokenizer_prompt(smollm2_h5):
    """With the real tokenizer: the prompt's ids are those of its text, the length is met to
    within a few tokens, the key is split in single digits."""
    import h5py

    with h5py.File(smollm2_h5) as f:
        tok = BPETokenizer(f["tokenizer.json"][()].tobytes().decode("utf-8"))
    builder = pk.PromptBuilder(tok)
    for length in (1024, 2048, 8192):
        for depth in (0.0, 0.3, 1.0):
            p = builder.build(length, depth, pk.trial_key(0, length, depth, 0))
            assert abs(p.ids.size - length) <= 3
            assert np.array_equal(tok.encode(tok.decode(p.ids)), p.ids)
            assert abs(p.measured_depth - depth) < 0.01
    assert tok.tokens(" 12345")[-5:] == ["1", "2", "3", "4", "5"]


def test_plot(model_file, tmp_path):
    pytest.importorskip("matplotlib", reason="hadref plot needs matplotlib")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    ok(run("passkey", model_file, "--lengths", "400,500", "--depths", "3", "--trials", "1",
           "--quiet", "--json", a))
    ok(run("passkey", model_file, "--lengths", "400", "--depths", "2", "--trials", "1",
           "--quiet", "--json", b))
    png = tmp_path / "pk.png"
    r = ok(run("plot", "passkey", a, b, "-o", png, "--label", "one", "--label", "two"))
    assert f"wrote {png}" in r.output and png.read_bytes()[:4] == b"\x89PNG"
    # the figure exists now: its own errors first, then the inputs' (with --overwrite)
    error(run("plot", "passkey", a, "-o", png), f"-o {png}: file exists; pass --overwrite")
    error(run("plot", "passkey", a, "-o", a, "--overwrite"), "expected a figure file ending in")
    before = a.read_text()
    a_png = tmp_path / "a.png"
    a.rename(a_png)
    error(run("plot", "passkey", a_png, "-o", a_png, "--overwrite"), "are the same file")
    a_png.rename(a)
    assert a.read_text() == before
    (tmp_path / "bad.json").write_text("{}")
    error(run("plot", "passkey", tmp_path / "bad.json", "-o", png, "--overwrite"),
          "not a hadref passkey")
    error(run("plot", "passkey", a, "-o", png, "--overwrite", "--label", "x", "--label", "y"),
          "--label")
    # files of one model merge into one panel: lengths and depths the unions
    from hadref.engine.passkey_plot import merge_runs, read_passkey

    merged, names = merge_runs([read_passkey(a), read_passkey(b)], ["m", "m"])
    assert names == ["m"] and merged[0]["settings"]["lengths"] == [400, 500]
    assert merged[0]["settings"]["depths"] == [0.0, 0.5, 1.0]
    assert len(merged[0]["by_cell"]) == 6 + 2 - 2  # b's two 400-token cells are a's too
    assert merged[0]["by_length"]["400"]["trials"] == 3


def test_binarized_teacher(model_file, tmp_path):
    """--binarize: the float teacher on HAD's causal core (packed kernels, packed key cache),
    sigma and N in the settings; a --resume with another N is refused."""
    out = tmp_path / "bin.json"
    args = ["passkey", model_file, "--lengths", "400", "--depths", "2", "--trials", "2",
            "--quiet", "--binarize", "--sigma-windows", "1", "--sigma-len", "100"]
    ok(run(*args, "--json", out))
    data = json.loads(out.read_text())
    s = data["settings"]
    assert s["model_kind"] == "binarized" and s["top_n"] is None
    assert s["top_n_ratio"] == pytest.approx(0.117) and s["top_n_rule"] == "per row"
    assert len(s["binarized"]["sigma_q"]) == 2 and "pydoc_data.topics" in s["binarized"]["sigma_text"]
    assert data["complete"] and len(data["cells"]) == 2
    error(run(*args, "--top-n", "4", "--json", out, "--resume"), "top_n = None")
    ok(run(*args, "--top-n", "4", "--json", tmp_path / "fixed.json"))
    assert json.loads((tmp_path / "fixed.json").read_text())["settings"]["top_n"] == 4
    assert json.loads((tmp_path / "fixed.json").read_text())["settings"]["top_n_rule"] is None
    # a file from before N per row (one N per forward: no top_n_rule) is not resumed
    del data["settings"]["top_n_rule"]
    out.write_text(json.dumps(data))
    error(run(*args, "--json", out, "--resume"), "top_n_rule = None")
