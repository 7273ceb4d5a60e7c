"""hadref: the reference implementation of Hamming Attention Distillation (HAD).

The public API is small; everything else is private to its module.

Models (hand-written NumPy BERT engine)::

    model = hadref.load("weights/bert.h5")          # encoder (+ head), config, tokenizer
    out = model.forward(input_ids, attention_mask)  # out.last_hidden_state (B, T, H) float32

Decoder models (Llama family, e.g. SmolLM2 from GGUF)::

    model = hadref.load("weights/smollm2.h5")       # a LlamaModel
    out = model.forward(input_ids)                  # out.logits (B, T, V) float32
    new = model.generate(model.tokenizer.encode("The capital of France is"), 16)
    model.attention_core = hadref.HADCausalCore(sigma_q, sigma_k, top_n=None)  # HAD in it

HAD attention on plain arrays (Numba kernels on packed sign bits)::

    bits = hadref.pack_signs(q)                      # (..., d) float -> (..., ceil(d/64)) uint64
    idx, scores = hadref.hamming_topn(q_bits, k_bits, d, top_n)
    o = hadref.had_attention(q, k, v, top_n=30)      # (..., n, d) float32
    o_ref = hadref.float_attention(q, k, v)

Jobs on model files (what ``hadref finetune / distill / evaluate`` run)::

    hadref.run_finetune("weights/bert.h5", "sst2", hadref.FinetuneSettings(max_len=64),
                        out="weights/teacher.h5")                 # -> {"metrics", "out", ...}
    s = hadref.DistillSettings.from_schedule("quick", top_n=30)
    hadref.run_distill("weights/teacher.h5", "sst2", s)           # -> {"metrics", "stage_metrics", ...}
    hadref.run_evaluate("weights/teacher-had.h5", "sst2", check=True)

The full list with shapes is ``docs/api.md``. Names are imported lazily so that ``import hadref``
stays fast and a command pays only for
the parts it uses (Numba compilation in particular).
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "HadrefError": "hadref.errors",
    "BertConfig": "hadref.engine.config",
    "BertModel": "hadref.engine.bert",
    "LlamaConfig": "hadref.engine.config",
    "LlamaModel": "hadref.engine.llama",
    "load": "hadref.engine.io",
    "save": "hadref.engine.io",
    "pack_signs": "hadref.had.attention",
    "hamming_topn": "hadref.had.attention",
    "had_attention": "hadref.had.attention",
    "float_attention": "hadref.had.attention",
    "PackedKeyCache": "hadref.had.cache",
    "HADAttentionCore": "hadref.had.core",
    "HADCausalCore": "hadref.had.causal_core",
    # jobs on model files (what the CLI's finetune / distill / evaluate run)
    "run_finetune": "hadref.train.jobs",
    "run_distill": "hadref.distill.run",
    "run_evaluate": "hadref.train.jobs",
    "DataSource": "hadref.train.jobs",
    "FinetuneSettings": "hadref.train.finetune",
    "DistillSettings": "hadref.distill.settings",
    "run_distill_lm": "hadref.distill.lm_run",
    "LMDistillSettings": "hadref.distill.lm_settings",
    "TextSource": "hadref.data.text",
    # a training step of your own
    "Adam": "hadref.engine.optim",
    "clip_grad_norm": "hadref.engine.optim",
    "softmax_cross_entropy": "hadref.engine.layers.losses",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hadref' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
