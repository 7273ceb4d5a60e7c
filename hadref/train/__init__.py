"""Training jobs on the engine, shared by fine-tuning and distillation.

:mod:`.loop` (steps, checkpoints, resume), :mod:`.checkpoint` (atomic checkpoint files),
:mod:`.progress` (status line, JSON log), :mod:`.evaluation` (dev-set predictions and
metrics), :mod:`.metrics` (GLUE metrics), :mod:`.finetune` (teacher fine-tuning),
:mod:`.memory` (the allocator setting of training processes).
"""
