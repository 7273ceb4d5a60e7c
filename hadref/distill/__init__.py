"""HAD distillation (../shared/HAD.md, "Training").

:mod:`.trainer` (``distill``, ``DistillSettings``: the four stages), :mod:`.losses`
(attention and output distillation with their gradients), :mod:`.schedule` (c and the
stage plan), :mod:`.sigma` (standardization coefficients), :mod:`.loop` (steps,
checkpoints, resume), :mod:`.checkpoint`, :mod:`.progress`, :mod:`.evaluation`.
Teacher fine-tuning is :mod:`hadref.finetune`.
"""
