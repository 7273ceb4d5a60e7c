"""Decoder student files: `had` metadata in a decoder HDF5 file (save, load -> a LlamaModel on
HADCausalCore.for_inference, info, generate), and bad metadata as one-line errors."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from test_llama_files import tiny32, write_gguf

import hadref
from hadref.cli import main
from hadref.engine.io import describe, save
from hadref.engine.llama import LlamaModel
from hadref.errors import HadrefError
from hadref.had.cache import PackedCausalKVCache
from hadref.had.causal_core import HADCausalCore

pytest.importorskip("gguf", reason="the gguf package is a dependency: pip install gguf")


def _had(top_n=3, **kw):
    return {"sigma_q": [0.9, 1.1], "sigma_k": [1.2, 0.8], "top_n": top_n, "stage": "4",
            "settings": {"max_len": 16}, "teacher_sha256": "ab" * 32, **kw}


@pytest.fixture
def teacher(tmp_path):
    from hadref.engine.gguf import read_gguf

    return read_gguf(write_gguf(tmp_path / "tiny.gguf", tiny32()))


@pytest.mark.parametrize("top_n,ratio", [(3, 0.117), (0, 0.25)])
def test_student_file_round_trip_loads_on_the_packed_kernels(teacher, tmp_path, top_n, ratio):
    path = save(teacher, tmp_path / "student.h5", had=_had(top_n, top_n_ratio=ratio))
    student = hadref.load(path)
    assert isinstance(student, LlamaModel)
    core = student.attention_core
    assert isinstance(core, HADCausalCore) and core.transform == "hard" and core.use_kernels
    assert core.top_n == (top_n or None) and core.top_n_ratio == ratio
    np.testing.assert_array_equal(core.sigma_q, [0.9, 1.1])
    assert student.had["stage"] == "4" and student.had["settings"] == {"max_len": 16}
    assert student.had["top_n"] == top_n and student.had["top_n_ratio"] == ratio
    assert isinstance(student.new_kv_cache(8), PackedCausalKVCache)
    # saving the loaded student keeps its metadata (model.had)
    again = hadref.load(save(student, tmp_path / "again.h5"))
    assert again.had["teacher_sha256"] == "ab" * 32
    ids = np.array([[3, 4, 5, 10, 12, 7]])
    np.testing.assert_array_equal(again.forward(ids).logits, student.forward(ids).logits)
    expected = HADCausalCore.for_inference([0.9, 1.1], [1.2, 0.8], top_n or None, ratio)
    teacher.attention_core = expected
    np.testing.assert_array_equal(student.forward(ids).logits, teacher.forward(ids).logits)
    info = describe(path)
    assert info["had"]["top_n"] == top_n
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "HAD         top_n=" in result.output and "packed key cache" in result.output
    result = CliRunner().invoke(main, ["info", str(path), "--json"])
    assert json.loads(result.output)["had"]["sigma_k"] == [1.2, 0.8]


def test_a_ratio_student_decodes_as_its_full_forwards(teacher, tmp_path):
    # top_n 0: N per query row (round(ratio x keys it sees)), so the packed cache's decoding
    # equals greedy decoding from full forwards, and the kernels equal the training path
    from hadref.had.decoder_check import check_layers

    student = hadref.load(save(teacher, tmp_path / "student.h5", had=_had(0, top_n_ratio=0.4)))
    prompt = np.array([3, 4, 5, 10, 12, 7, 3, 9, 11, 2])  # 10 + 6: the context length
    new = student.generate(prompt, 6, stop_at_eos=False)
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(np.argmax(student.forward(np.array([seq])).logits[0, -1])))
    assert new.tolist() == seq[len(prompt):]
    assert check_layers(student, np.array(seq))["agree"]


def test_generate_command_on_a_student(teacher, tmp_path):
    path = save(teacher, tmp_path / "student.h5", had=_had(2))
    result = CliRunner().invoke(main, ["generate", str(path), "--prompt", "ab ab",
                                       "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    student = hadref.load(path)
    new = student.generate(student.tokenizer.encode("ab ab"), 5)
    assert result.output.startswith("ab ab" + student.tokenizer.decode(new) + "\n")


@pytest.mark.parametrize("had,match", [
    (dict(_had(), sigma_q=[1.0]), "sigma_q must be 2 finite positive numbers"),
    (dict(_had(), sigma_k=[1.0, -1.0]), "sigma_k must be 2"),
    (dict(_had(), top_n=-1), "top_n must be an integer >= 0"),
    (dict(_had(), top_n=2.5), "top_n must be an integer >= 0"),
    (dict(_had(), top_n_ratio=0.0), "top_n_ratio must be a number in"),
    (dict(_had(), top_n_ratio="a"), "top_n_ratio must be a number in"),
    (dict(_had(), settings=[1]), "settings must be a dict"),
    (dict(_had(), sigma=[1.0]), "unknown field 'sigma'"),
    ({"sigma_q": [1.0, 1.0]}, "missing field 'sigma_k'"),
])
def test_bad_student_metadata_is_a_one_line_error(teacher, tmp_path, had, match):
    with pytest.raises(HadrefError, match=match) as err:
        save(teacher, tmp_path / "bad.h5", had=had)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad.h5").exists()


def test_bad_had_group_in_a_decoder_file(teacher, tmp_path):
    path = save(teacher, tmp_path / "student.h5", had=_had())
    with h5py.File(path, "a") as f:
        f["had"].attrs["top_n_ratio"] = 3.0
    with pytest.raises(HadrefError, match=r"student.h5: group had: top_n_ratio must be"):
        hadref.load(path)
    with h5py.File(path, "a") as f:
        del f["had/sigma_k"]
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 2 and "missing dataset had/sigma_k" in result.output


def test_binarized_teacher_saves_as_a_student_file(teacher, tmp_path):
    from hadref.had.causal_core import binarized_teacher

    hard = binarized_teacher(teacher, [0.9, 1.1], [1.2, 0.8], top_n=None, top_n_ratio=0.5)
    back = hadref.load(save(hard, tmp_path / "binarized.h5"))
    assert back.had["stage"] == "binarized" and back.attention_core.top_n is None
    ids = np.array([[3, 4, 5, 10, 12, 7]])
    np.testing.assert_array_equal(back.forward(ids).logits, hard.forward(ids).logits)


def test_perplexity_check_compares_the_kernels_with_the_training_path_layer_by_layer(
        teacher, tmp_path, monkeypatch):
    from hadref.had import decoder_check

    path = save(teacher, tmp_path / "student.h5", had=_had(3, top_n_ratio=0.117))
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat and the dog ran to the cat " * 4)
    result = CliRunner().invoke(main, ["perplexity", str(path), "--text", str(text), "--seq", "16",
                                       "--check", "--json"])
    assert result.exit_code == 0, result.output
    check = json.loads(result.output)["check"]
    assert check["agree"] and len(check["layers"]) == 2 and check["tokens"] == 16
    assert 0 <= check["worst"] <= check["rtol"]
    # a training path that keeps other keys (N = 1 instead of 3) is caught, naming the layer
    real = decoder_check._ComparingCore.__init__

    def other_n(self, packed, dense, n_layers):
        dense.top_n = 1
        real(self, packed, dense, n_layers)

    monkeypatch.setattr(decoder_check._ComparingCore, "__init__", other_n)
    result = CliRunner().invoke(main, ["perplexity", str(path), "--text", str(text), "--seq", "16",
                                       "--check"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--check: the packed kernels and the training path differ at layer" in result.output
    # a float model has nothing to check
    plain = save(teacher, tmp_path / "plain.h5")
    result = CliRunner().invoke(main, ["perplexity", str(plain), "--text", str(text), "--seq", "16",
                                       "--check"])
    assert result.exit_code == 2 and "expected a HAD decoder student" in result.output
