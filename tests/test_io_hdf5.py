"""Our HDF5 model file: round trips (bit-identical), the had group, atomic writes, clear
errors for bad files, convert from safetensors files and HF folders, the CLI commands."""

import json
import sys
import types

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

import hadref
from hadref.cli import main
from hadref.engine.bert import BertModel
from hadref.engine.config import BertConfig
from hadref.engine.io import convert, describe, load, save
from hadref.errors import HadrefError

CFG = BertConfig(vocab_size=13, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=6, max_position_embeddings=10)
HAD = {"sigma_q": [1.5, 2.0], "sigma_k": [0.5, 0.25], "top_n": 3, "ste_t": 2.0, "stage": "ste",
       "settings": {"gamma": 0.9995}, "teacher_sha256": "ab" * 32}


@pytest.fixture
def model():
    return BertModel.random(CFG, seed=4)


def test_save_load_round_trip_is_bit_identical(tmp_path, model):
    model.add_classifier(3)
    save(model, tmp_path / "a.h5")
    back = load(tmp_path / "a.h5")
    assert back.config == model.config and back.num_labels == 3
    for name, value in model.params.items():
        assert back.params[name].tobytes() == value.tobytes(), name
    save(back, tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    assert back.tokenizer is None


def test_had_group_round_trips_and_installs_the_inference_core(tmp_path, model, monkeypatch):
    save(model, tmp_path / "had.h5", had=HAD)
    with h5py.File(tmp_path / "had.h5") as f:
        assert f["had/sigma_q"].shape == (2,) and f["had"].attrs["top_n"] == 3
    made = []

    class FakeCore:
        @classmethod
        def for_inference(cls, sigma_q, sigma_k, top_n):
            made.append((list(sigma_q), list(sigma_k), top_n))
            return cls()

    fake = types.ModuleType("hadref.had.core")
    fake.HADAttentionCore = FakeCore
    monkeypatch.setitem(sys.modules, "hadref.had.core", fake)
    back = load(tmp_path / "had.h5")
    assert isinstance(back.attention_core, FakeCore)
    assert made == [([1.5, 2.0], [0.5, 0.25], 3)]
    assert back.had["settings"] == {"gamma": 0.9995} and back.had["stage"] == "ste"
    assert back.had["ste_t"] == 2.0 and back.had["teacher_sha256"] == "ab" * 32
    save(back, tmp_path / "had2.h5")  # model.had is saved again without being passed
    assert (tmp_path / "had.h5").read_bytes() == (tmp_path / "had2.h5").read_bytes()
    assert describe(tmp_path / "had.h5")["had"]["top_n"] == 3


def test_had_file_without_had_core_is_a_clear_error(tmp_path, model, monkeypatch):
    save(model, tmp_path / "had.h5", had=HAD)
    monkeypatch.setitem(sys.modules, "hadref.had.core", None)  # import raises ModuleNotFoundError
    with pytest.raises(Exception) as info:
        load(tmp_path / "had.h5")
    # with sys.modules[name] = None the import error's .name is set: we get our message
    assert isinstance(info.value, HadrefError) and "had_core" in str(info.value)


@pytest.mark.parametrize("bad, match", [
    ({"sigma_q": [1.0], "sigma_k": [1.0, 1.0], "top_n": 3}, "sigma_q must be 2"),
    ({"sigma_q": [1.0, -1.0], "sigma_k": [1.0, 1.0], "top_n": 3}, "sigma_q"),
    ({"sigma_q": [1.0, 1.0], "sigma_k": [1.0, 1.0], "top_n": 0}, "top_n"),
    ({"sigma_q": [1.0, 1.0], "sigma_k": [1.0, 1.0]}, "missing field 'top_n'"),
])
def test_bad_had_metadata_is_refused_on_save(tmp_path, model, bad, match):
    with pytest.raises(HadrefError, match=match):
        save(model, tmp_path / "x.h5", had=bad)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file


def test_failed_write_leaves_no_file(tmp_path, model, monkeypatch):
    save(model, tmp_path / "keep.h5")
    before = (tmp_path / "keep.h5").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(RuntimeError):
        save(model, tmp_path / "keep.h5")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["keep.h5"]
    assert (tmp_path / "keep.h5").read_bytes() == before


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.attrs.__setitem__("format_version", 99), "unknown format_version 99"),
    (lambda f: f.attrs.__delitem__("format_version"), "no format_version"),
    (lambda f: f.attrs.__setitem__("config", "{not json"), "config is not valid JSON"),
    (lambda f: f.__delitem__("params/encoder.layer.1.output.dense.bias"),
     "missing dataset params/encoder.layer.1.output.dense.bias"),
    (lambda f: f.create_dataset("params/extra.weight", data=np.zeros(2, np.float32)),
     "unexpected dataset params/extra.weight"),
    (lambda f: (f.__delitem__("params/pooler.dense.bias"),
                f.create_dataset("params/pooler.dense.bias", data=np.zeros(3, np.float32))),
     r"params/pooler.dense.bias has shape \(3,\), the config expects \(8,\)"),
    (lambda f: f["params/embeddings.LayerNorm.bias"].__setitem__(0, np.inf), "non-finite"),
    (lambda f: (f.__delitem__("params/embeddings.LayerNorm.bias"),
                f.create_dataset("params/embeddings.LayerNorm.bias", data=np.zeros(8, np.int32))),
     "not a float array"),
    (lambda f: f.__delitem__("params"), "no 'params' group"),
    (lambda f: f.create_dataset("tokenizer.json", data=np.frombuffer(b"{oops", np.uint8)),
     "tokenizer.json"),
    (lambda f: f.create_group("had"), "missing dataset had/sigma_q"),
])
def test_bad_files_name_the_file_and_dataset(tmp_path, model, edit, match):
    path = tmp_path / "m.h5"
    save(model, path)
    _edit(path, edit)
    with pytest.raises(HadrefError, match=match) as info:
        load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_not_hdf5_and_missing_file(tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(HadrefError, match="not an HDF5 file"):
        load(tmp_path / "x.h5")
    with pytest.raises(HadrefError, match="no such file"):
        load(tmp_path / "nope.h5")


def _hf_state_dict(model, prefix="bert."):
    sd = {prefix + k: v for k, v in model.params.items() if not k.startswith("classifier")}
    sd.update({k: v for k, v in model.params.items() if k.startswith("classifier")})
    sd[prefix + "embeddings.position_ids"] = np.arange(10, dtype=np.int64)[None]
    return sd


def test_convert_hf_folder_with_prefix_and_head(tmp_path, model):
    model.add_classifier(2)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(_hf_state_dict(model), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**CFG.to_dict(), "model_type": "bert",
                                                    "id2label": {"0": "a", "1": "b"}}))
    (folder / "vocab.txt").write_text("\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "a", "b", "c", "d",
         "e", "f"]))
    out = convert(folder, tmp_path / "w" / "m.h5")
    back = load(out)
    assert back.num_labels == 2
    for name, value in model.params.items():
        np.testing.assert_array_equal(back.params[name], value)
    enc = back.tokenizer.encode(["hello world"], ["a b"])
    assert enc.input_ids.tolist() == [[2, 5, 6, 3, 7, 8, 3]]
    assert enc.token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1]]


def test_convert_lone_safetensors_reads_sizes_off_the_shapes(tmp_path):
    cfg = BertConfig(vocab_size=13, hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=6, max_position_embeddings=10)
    m = BertModel.random(cfg)
    save_file(_hf_state_dict(m, prefix=""), str(tmp_path / "x.safetensors"))
    # the shapes do not say the number of heads: never guessed (hidden / 64 would say 2)
    with pytest.raises(HadrefError, match="no config.json beside it to give the number of "
                                          "attention heads: pass --heads"):
        convert(tmp_path / "x.safetensors", tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
    back = load(convert(tmp_path / "x.safetensors", tmp_path / "x.h5", num_heads=2))
    assert back.config.num_attention_heads == 2 and back.config.num_hidden_layers == 1
    back = load(convert(tmp_path / "x.safetensors", tmp_path / "y.h5", num_heads=4))
    assert back.config.num_attention_heads == 4


def test_convert_errors(tmp_path, model):
    with pytest.raises(HadrefError, match="no model.safetensors"):
        convert(tmp_path, tmp_path / "o.h5")
    with pytest.raises(HadrefError, match="expected 'minilm'"):
        convert(tmp_path / "nothing-here", tmp_path / "o.h5")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(HadrefError, match="cannot read as safetensors"):
        convert(tmp_path / "bad.safetensors", tmp_path / "o.h5")
    sd = _hf_state_dict(model)
    del sd["bert.encoder.layer.0.output.dense.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    with pytest.raises(HadrefError, match="missing tensor encoder.layer.0.output.dense.weight"):
        convert(tmp_path, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_cli_convert_and_info(tmp_path, model):
    save_file(_hf_state_dict(model, prefix=""), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(tmp_path), "-o", str(tmp_path / "m.h5")])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and f"{model.num_parameters():,} parameters" in res.output
    res = runner.invoke(main, ["info", str(tmp_path / "m.h5")])
    assert res.exit_code == 0 and "L=2 H=8 heads=2" in res.output and "HAD         none" in res.output
    res = runner.invoke(main, ["info", "--json", str(tmp_path / "m.h5")])
    assert json.loads(res.output)["parameters"] == model.num_parameters()
    res = runner.invoke(main, ["info", str(tmp_path / "missing.h5")])
    assert res.exit_code == 2 and "hadref: error:" in res.output and "Traceback" not in res.output


def test_cli_info_shows_had_metadata(tmp_path, model):
    save(model, tmp_path / "had.h5", had=HAD)
    res = CliRunner().invoke(main, ["info", str(tmp_path / "had.h5")])
    assert res.exit_code == 0, res.output
    assert "top_n=3 stage=ste" in res.output and "1.5, 2" in res.output


def test_public_names():
    assert hadref.load is load and hadref.save is save


def test_had_file_loads_with_the_real_had_core(tmp_path, model):
    had_core = pytest.importorskip("hadref.had.core", reason="hadref.had.core not built yet")
    save(model, tmp_path / "had.h5", had=HAD)
    back = load(tmp_path / "had.h5")
    assert isinstance(back.attention_core, had_core.HADAttentionCore)
    out = back.forward(np.array([[1, 2, 3, 4, 0]]), np.array([[1, 1, 1, 1, 0]]),
                       output_attentions=True)
    probs = out.attentions[0]
    assert np.isfinite(out.last_hidden_state).all()
    assert ((probs > 0).sum(-1) <= HAD["top_n"]).all()  # top-N attention is in use
