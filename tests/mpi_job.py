"""A tiny fine-tuning or distillation run on generated data, for tests/test_mpi.py.

Run as ``python tests/mpi_job.py ...`` (one process) or ``mpiexec -n P python
tests/mpi_job.py ...`` (P ranks, MPI.COMM_WORLD found by hadref itself). Every rank writes
``OUT.rankR.npz``: its final parameters, the logged step losses and the dev metrics.
``--kill-rank R --kill-step S`` makes rank R kill itself (SIGKILL) after step S, as a
crashed machine would; ``--sigint-rank R --sigint-step S`` sends rank R alone a Ctrl-C
(SIGINT) after step S.
"""

import argparse
import json
import os
import signal

import numpy as np

from hadref.data import get_task
from hadref.data.batching import Encoded
from hadref.distill.trainer import DistillSettings, distill
from hadref.engine.bert import BertModel
from hadref.engine.config import BertConfig
from hadref.train.finetune import FinetuneSettings, finetune
from hadref.train.parallel import current_ranks

# gamma 0.5: stage 1 c = 5, 2.5, 1.25 (3 steps); stage 2 c = 1 ... 0.0625 (5 steps); 2 + 2
FAST = dict(gamma=0.5, stage3_steps=2, stage4_steps=2, sigma_batches=5, sigma_batch_size=6,
            top_n=5, max_len=24, lr=1e-3, lr_stage4=2e-4)


def generated(n: int, seed: int, vocab: int = 64) -> Encoded:
    """n examples of 3..20 random tokens ([CLS] ... [SEP]), labels 0/1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 21, n)
    parts = []
    for length in lengths:
        body = rng.integers(5, vocab, length - 2)
        parts.append(np.concatenate([[2], body, [3]]).astype(np.int32))
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(parts)
    return Encoded(ids, np.zeros(len(ids), np.int8), offsets, rng.integers(0, 2, n))


def tiny_model(seed: int = 0) -> BertModel:
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    model = BertModel.random(cfg, seed=seed)
    model.add_classifier(2, seed=seed)
    return model


class ListLog:
    def __init__(self):
        self.records = []

    def write(self, **record):
        self.records.append(record)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=["finetune", "distill"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=6, help="fine-tuning steps")
    ap.add_argument("--batch-size", type=int, default=7)
    ap.add_argument("--dropout", action="store_true")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-rank", type=int, default=-1)
    ap.add_argument("--kill-step", type=int, default=-1)
    ap.add_argument("--sigint-rank", type=int, default=-1)
    ap.add_argument("--sigint-step", type=int, default=-1)
    args = ap.parse_args()

    ranks = current_ranks()
    task = get_task("sst2")
    train, dev = generated(120, 1), generated(37, 2)
    model = tiny_model()
    log = ListLog()

    def on_step(step):
        if ranks.rank == args.kill_rank and step == args.kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if ranks.rank == args.sigint_rank and step == args.sigint_step:
            os.kill(os.getpid(), signal.SIGINT)

    common = dict(checkpoint_path=args.checkpoint, checkpoint_every=0.0, resume=args.resume,
                  log=log, on_step=on_step, eval_batch_size=8)
    if args.job == "finetune":
        settings = FinetuneSettings(steps=args.steps, batch_size=args.batch_size, lr=1e-3,
                                    max_len=24, dropout=args.dropout, warmup_ratio=0.2)
        metrics = finetune(model, train, dev, task, settings, **common)
        params = model.params
    else:
        settings = DistillSettings(**FAST, batch_size=args.batch_size, dropout=args.dropout)
        student, stage_metrics = distill(model, train, dev, task, settings, **common)
        params, metrics = student.params, stage_metrics
        params = {**params, "had.sigma_q": student.had["sigma_q"],
                  "had.sigma_k": student.had["sigma_k"]}
    losses = [r.get("loss") for r in log.records if "loss" in r]
    norms = [r.get("grad_norm") for r in log.records if "grad_norm" in r]
    np.savez(f"{args.out}.rank{ranks.rank}.npz", **{f"p.{k}": v for k, v in params.items()},
             losses=np.array(losses, np.float64), grad_norms=np.array(norms, np.float64),
             steps=np.array([r["step"] for r in log.records if "loss" in r], np.int64),
             meta=np.array(json.dumps({"metrics": metrics, "size": ranks.size})))


if __name__ == "__main__":
    main()
