"""GLUE data: tasks and their files (:mod:`.glue`), tokenized sets and bucketed batches
(:mod:`.batching`)."""

from hadref.data.batching import Batch, BatchStream, Encoded, encode_split, eval_batches
from hadref.data.glue import TASKS, Split, Task, get_task, load_split, read_tsv, report_skipped

__all__ = ["TASKS", "Batch", "BatchStream", "Encoded", "Split", "Task", "encode_split",
           "eval_batches", "get_task", "load_split", "read_tsv", "report_skipped"]
