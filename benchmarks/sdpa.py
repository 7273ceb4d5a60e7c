"""HAD attention against PyTorch's CPU attention, alternated in one process (issue 21).

PyTorch is optional and never a hadref dependency: run this in an environment that has
torch next to hadref (a throwaway virtual environment). For every sequence length it
calls ``hadref.had_attention`` and ``torch.nn.functional.scaled_dot_product_attention``
alternately on the same N(0, 1) float32 inputs (batch 1, ``--heads`` heads, d 64,
N = round(0.117 seq) unless ``--top-n``), after one warm-up call each, for ``--rounds``
rounds, and prints the median of each and the median of the per-round ratios (paired:
both were timed in the same minute, which is what survives a VM whose speed moves
between minutes). Wall clock; both use ``--threads`` threads (Numba's pool and torch's).

    /tmp/torchvenv/bin/python benchmarks/sdpa.py --seq 1024,16384 --threads 2
    /tmp/torchvenv/bin/python benchmarks/sdpa.py --seq 1024 --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and whether it has AVX-512."""
    name, flags = platform.processor() or "?", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("?", "", "x86_64"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    return f"{name} ({'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", default="1024", help="sequence lengths, comma-separated")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--top-n", type=int, default=None, help="N [default: round(0.117 seq)]")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=21, help="alternated timed rounds")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("sdpa.py: torch is not importable here (optional: a throwaway virtual environment "
              "with torch and hadref)", file=sys.stderr)
        return 2
    import numba
    import numpy as np

    import hadref

    seqs = [int(s) for s in args.seq.split(",") if s.strip()]
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    results = []
    for seq in seqs:
        top_n = args.top_n or max(1, round(0.117 * seq))
        q, k, v = (rng.standard_normal((1, args.heads, seq, args.dim), dtype=np.float32)
                   for _ in range(3))
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

        def had():
            return hadref.had_attention(q, k, v, top_n, causal=args.causal)

        def sdpa():
            with torch.inference_mode():
                return F.scaled_dot_product_attention(tq, tk, tv, is_causal=args.causal)

        had(), sdpa()  # compile, warm caches
        rounds = args.rounds if seq <= 4096 else max(3, args.rounds // 7)
        t_had, t_sdpa = [], []
        for r in range(rounds):
            pair = (had, sdpa) if r % 2 == 0 else (sdpa, had)  # alternate who goes first
            for fn in pair:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                (t_had if fn is had else t_sdpa).append(dt)
        ratios = [s / h for s, h in zip(t_sdpa, t_had)]
        results.append({"seq": seq, "heads": args.heads, "dim": args.dim, "top_n": top_n,
                        "causal": args.causal, "rounds": rounds,
                        "had_ms": 1e3 * float(np.median(t_had)),
                        "sdpa_ms": 1e3 * float(np.median(t_sdpa)),
                        "sdpa_over_had_paired": float(np.median(ratios)),
                        "sdpa_over_had_min": float(min(t_sdpa) / min(t_had))})
    head = {"cpu": cpu_name(), "threads": args.threads, "load_average": os.getloadavg(),
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "hadref": getattr(hadref, "__version__", "?"), "results": results}
    if args.json:
        print(json.dumps(head, indent=2))
        return 0
    print(f"{head['cpu']}, {args.threads} thread(s), load average "
          f"{' '.join(f'{x:.2f}' for x in head['load_average'])}; torch {head['torch']} "
          f"({head['torch_cpu_capability']}), hadref {head['hadref']}")
    print(f"{'seq':>7} {'N':>5} {'rounds':>6} {'HAD ms':>9} {'SDPA ms':>9} {'SDPA/HAD':>9} {'(minima)':>9}")
    for r in results:
        print(f"{r['seq']:>7} {r['top_n']:>5} {r['rounds']:>6} {r['had_ms']:>9.2f} {r['sdpa_ms']:>9.2f} "
              f"{r['sdpa_over_had_paired']:>8.2f}x {r['sdpa_over_had_min']:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
