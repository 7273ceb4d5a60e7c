"""The hand-written NumPy engine: model configs, the models (forward and backward), their
layers, the optimizer, the tokenizer and the model files.

:mod:`.config` (``BertConfig``), :mod:`.bert` (``BertModel``), :mod:`.layers` (one
forward/backward pair per module), :mod:`.elementwise` (the Numba-fused elementwise kernels
the layers call: LayerNorm, GELU, softmax and their backwards), :mod:`.optim` (Adam(W),
global-norm clipping), :mod:`.tokenizer`, :mod:`.io` (``load``, ``save``, ``convert``).

The decoder family: :mod:`.llama` (``LlamaModel``, with ``LlamaConfig`` in :mod:`.config`),
:mod:`.bpe_tokenizer` (byte-level BPE), :mod:`.gguf` (GGUF files -> LlamaModel).
"""
