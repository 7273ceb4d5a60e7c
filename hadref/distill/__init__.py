"""HAD distillation (../shared/HAD.md, "Training").

:mod:`.trainer` (``distill``, ``DistillSettings``: the four stages), :mod:`.losses`
(attention and output distillation with their gradients), :mod:`.schedule` (c and the
stage plan), :mod:`.sigma` (standardization coefficients). The generic training loop,
checkpoints, progress and evaluation are in :mod:`hadref.train`.
"""
