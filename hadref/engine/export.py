"""Export a hadref model file to a Hugging Face model folder (``hadref export``).

The folder holds:

- ``config.json``: the BERT config with Hugging Face's names, ``architectures``
  (``BertForSequenceClassification`` with a head, else ``BertModel``), ``id2label``,
  ``label2id``, ``finetuning_task`` and ``problem_type`` from the file's provenance (labels
  ``LABEL_i`` and no task when it is unknown); for a HAD student the key ``"had"`` (below);
  the file's provenance under ``"hadref_provenance"``.
- ``model.safetensors``: every parameter as float32 under its Hugging Face name (with a
  head ``bert.``-prefixed encoder names and ``classifier.*``, as
  ``BertForSequenceClassification`` saves them; without one the bare ``BertModel`` names),
  plus the ``embeddings.position_ids`` buffer (int64, (1, P)) that BERT checkpoints carry.
- ``tokenizer.json`` (the model's tokenizer) and a small ``tokenizer_config.json``.

The ``"had"`` key of a student's config.json (what a HAD runtime needs besides the
weights)::

    "had": {"sigma_q": [L floats], "sigma_k": [L floats], "top_n": N, "ste_t": t,
            "stage": "4", "teacher_sha256": "...", "settings": {...distillation settings},
            "binarization": "<the convention, in words>"}

``hadref convert DIR`` reads the folder back: the same parameters bit for bit, and the
``had`` key and provenance restored. The folder is written beside its final name and
renamed into place; an existing non-empty folder is refused, never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hadref.errors import HadrefError

HAD_KEY = "had"
PROVENANCE_KEY = "hadref_provenance"
BINARIZATION = ("per layer l: Q_b = sign(Q_c / sigma_q[l]), K_b = sign(K_c / sigma_k[l]) with "
                "sign(0) = +1 (Q_c, K_c: the query and key projections after bias, every head); "
                "scores Q_b . K_b^T / sqrt(d) per head; keep the top_n largest scores of each "
                "query row (padding keys excluded), softmax over those only, times V "
                "(float); everything else unchanged")


def hf_config(model, task=None) -> dict:
    """The ``config.json`` dict of ``model`` (see the module docstring). ``task`` (a GLUE
    task name) names the labels of a file without provenance; it must agree with one
    that has it."""
    cfg = model.config.to_dict()
    num_labels = cfg.pop("num_labels")
    prov = getattr(model, "provenance", None) or {}
    if task is not None:
        from hadref.data import get_task

        t = get_task(task)
        if prov.get("task") not in (None, t.name):
            raise HadrefError(f"--task {t.name}: the file's head was trained on {prov['task']}")
        if num_labels != t.num_labels:
            raise HadrefError(f"--task {t.name} needs a {t.num_labels}-output head, the file "
                              f"has {num_labels or 'none'}")
        prov = {**prov, "task": t.name, "labels": None if t.labels is None else list(t.labels)}
    out = {"architectures": ["BertForSequenceClassification" if num_labels else "BertModel"],
           "model_type": "bert", "position_embedding_type": "absolute", **cfg}
    if num_labels:
        labels = prov.get("labels")
        regression = prov.get("task") is not None and labels is None
        if not labels or len(labels) != num_labels:
            labels = [f"LABEL_{i}" for i in range(num_labels)]
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
        out["num_labels"] = num_labels
        out["problem_type"] = ("regression" if regression or num_labels == 1
                               else "single_label_classification")
        if prov.get("task"):
            out["finetuning_task"] = prov["task"]
    if model.had is not None:
        had = model.had
        out[HAD_KEY] = {"sigma_q": [float(x) for x in had["sigma_q"]],
                        "sigma_k": [float(x) for x in had["sigma_k"]],
                        "top_n": int(had["top_n"]), "ste_t": float(had["ste_t"]),
                        "stage": str(had["stage"]), "teacher_sha256": had["teacher_sha256"],
                        "settings": had["settings"], "binarization": BINARIZATION}
    if getattr(model, "provenance", None):
        out[PROVENANCE_KEY] = model.provenance
    return out


def hf_tensors(model) -> dict:
    """{Hugging Face name: array} of ``model`` (float32; position_ids int64)."""
    prefix = "bert." if model.num_labels else ""
    tensors = {}
    for name, value in model.params.items():
        key = name if name.startswith("classifier.") else prefix + name
        tensors[key] = np.ascontiguousarray(value, dtype=np.float32)
    positions = model.config.max_position_embeddings
    tensors[prefix + "embeddings.position_ids"] = np.arange(positions, dtype=np.int64)[None, :]
    return tensors


def export(path, out_dir, task=None) -> Path:
    """Write the model file ``path`` as a Hugging Face folder ``out_dir``; returns it.
    ``task``: the GLUE task of a head whose file has no provenance (for its label names)."""
    from safetensors.numpy import save_file

    from hadref.engine.io import load

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HadrefError(f"-o {out_dir}: exists and is not an empty folder (export never "
                          "overwrites; choose a new folder)")
    model = load(path)
    config = hf_config(model, task)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True)
                                         + "\n", encoding="utf-8")
        save_file(hf_tensors(model), str(tmp / "model.safetensors"), metadata={"format": "np"})
        if model.tokenizer is not None:
            (tmp / "tokenizer.json").write_text(model.tokenizer.json, encoding="utf-8")
            (tmp / "tokenizer_config.json").write_text(json.dumps(
                {"tokenizer_class": "BertTokenizerFast",
                 "model_max_length": model.config.max_position_embeddings}, indent=2) + "\n",
                encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if out_dir.exists():
            out_dir.rmdir()   # empty (checked above): replaced by the finished folder
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
