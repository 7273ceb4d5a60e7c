"""Hamming attention: binarized queries and keys, top-N selection, sparse softmax and value sum.

Training path (NumPy, hand-written backward): :mod:`.binarize` (the stage transforms: scaled
tanh, STE, sign), :mod:`.topn` (top-N masked attention forward/backward), :mod:`.core`
(``HADAttentionCore``, the engine's attention core). Inference path (Numba kernels on packed
sign bits): :mod:`.attention` (``pack_signs``, ``hamming_topn``, ``had_attention``,
``float_attention``), :mod:`.cache` (``PackedKeyCache``), :mod:`.kernels`.
"""
