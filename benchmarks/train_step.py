"""Milliseconds per MiniLM-L6 classifier step: forward+backward+Adam (train, dropout on)
at (16, 64) and (16, 256), forward-only (eval) at (32, 128).

Both sides run in one process with interleaved repeats and report medians:

- ``hadref``: the engine as shipped (Numba-fused elementwise kernels);
- ``numpy``: the same engine with every fused kernel swapped for its plain-NumPy formula
  (same BLAS calls), the baseline the fusion is measured against;
- ``gemm``: only the step's matrix products (same shapes, same BLAS), the floor that any
  implementation on this BLAS pays; hadref/gemm is the engine's overhead.

Beside them, in columns marked "quoted", the PyTorch 2.13 CPU figures that issue 2 gives
(``PYTORCH_SOURCE``): not measured in this run or on this machine (hadref never imports
torch), so the ratio to them is only as good as the two machines are alike. Run:

    python benchmarks/train_step.py                 # all three shapes, 5 repeats
    python benchmarks/train_step.py --repeats 9 --json runs/train_step.json
    OPENBLAS_NUM_THREADS=1 python benchmarks/train_step.py --clock cpu   # shared machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hadref.engine import elementwise
from hadref.engine.layers.losses import softmax_cross_entropy
from hadref.engine.optim import Adam
from hadref.train.memory import keep_freed_memory

# Quoted, not measured here: see PYTORCH_SOURCE.
PYTORCH_MS = {"train B16 T64": 620.0, "train B16 T256": 3500.0, "forward B32 T128": 660.0}
PYTORCH_SOURCE = ("issue 2: PyTorch 2.13 CPU, 2 threads, same weights, Adam included, medians "
                  "on the 2-core machine where issue 2 was written")
SHAPES = [("train B16 T64", True, 16, 64), ("train B16 T256", True, 16, 256),
          ("forward B32 T128", False, 32, 128)]


# --- the plain-NumPy kernels (same signatures as hadref.engine.elementwise) ---------------------------

def _np_layernorm_forward(x, gamma, beta, eps, out, mean, rstd):
    mu = x.mean(axis=1)
    xc = x - mu[:, None]
    r = 1.0 / np.sqrt((xc * xc).mean(axis=1) + eps)
    out[...] = xc * r[:, None] * gamma + beta
    mean[...] = mu
    rstd[...] = r


def _np_layernorm_backward(dout, x, mean, rstd, gamma, dx, dgamma, dbeta):
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dout * gamma
    dx[...] = rstd[:, None] * (g - g.mean(axis=1, keepdims=True)
                               - xhat * (g * xhat).mean(axis=1, keepdims=True))
    dgamma += (dout * xhat).sum(axis=0)
    dbeta += dout.sum(axis=0)


def _np_erf(x):
    from scipy.special import erf

    return erf(x)


def _np_gelu_forward(x, out):
    out[...] = 0.5 * x * (1.0 + _np_erf(x / math.sqrt(2.0)))


def _np_gelu_backward(dout, x, dx):
    cdf = 0.5 * (1.0 + _np_erf(x / math.sqrt(2.0)))
    dx[...] = dout * (cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi))


def _np_masked_softmax(scores, key_mask, out):
    valid = key_mask[:, None, None, :]
    masked = np.where(valid, scores, -np.inf)
    row_max = masked.max(axis=-1, keepdims=True)
    e = np.where(valid, np.exp(masked - np.where(np.isfinite(row_max), row_max, 0.0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    out[...] = e / np.where(total > 0, total, 1.0)


def _np_softmax_backward(probs, dprobs, dscores):
    dscores[...] = probs * (dprobs - (probs * dprobs).sum(axis=-1, keepdims=True))


def _np_embedding_sum(input_ids, token_type_ids, word, position, token_type, out):
    out[...] = word[input_ids] + position[: input_ids.shape[1]] + token_type[token_type_ids]


def _np_scatter_add_rows(ids, rows, table):
    np.add.at(table, ids, rows)


def _np_adam_update(param, grad, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    param -= lr * (weight_decay * param + (m / bias1) / (np.sqrt(v / bias2) + eps))


def _np_sum_of_squares(x):
    return float(np.dot(x, x))


_PLAIN = {name[4:]: fn for name, fn in globals().items() if name.startswith("_np_") and
          name != "_np_erf"}


@contextmanager
def plain_numpy():
    """Swap hadref.engine.elementwise's kernels for the plain-NumPy ones (same engine otherwise)."""
    saved = {name: getattr(elementwise, name) for name in _PLAIN}
    for name, fn in _PLAIN.items():
        setattr(elementwise, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(elementwise, name, fn)


# --- the steps --------------------------------------------------------------------------------

def make_model(path):
    from hadref.engine.io import load, read_pretrained

    model = load(path) if path else read_pretrained("minilm")
    if model.num_labels is None:
        model.add_classifier(2, seed=0)
    return model


def make_step(model, train, batch, seq, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, model.config.vocab_size, (batch, seq))
    ids[:, 0] = 101
    mask = np.ones((batch, seq), np.int64)
    labels = rng.integers(0, model.num_labels, batch)
    if not train:
        return lambda: model.forward(ids, mask)
    adam = Adam(model.params, lr=1e-5)
    drop_rng = np.random.default_rng(seed + 1)

    def step():
        out = model.forward(ids, mask, train=True, rng=drop_rng)
        _, dlogits = softmax_cross_entropy(out.logits, labels)
        adam.step(model.backward(dlogits=dlogits))

    return step


def make_gemm_floor(model, train, batch, seq, seed=0):
    """The matrix products of one step (forward; + backward when train), nothing else."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    n, h, inner = batch * seq, cfg.hidden_size, cfg.intermediate_size
    heads = cfg.num_attention_heads
    d = h // heads

    def r(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    x, w_qkv, w_o, w_i, w_2 = r(n, h), r(3 * h, h), r(h, h), r(inner, h), r(h, inner)
    y_qkv, y_h, y_i = r(n, 3 * h), r(n, h), r(n, inner)
    q, k, v, probs = r(batch, heads, seq, d), r(batch, heads, seq, d), r(batch, heads, seq, d), \
        r(batch, heads, seq, seq)
    linears = [(x, w_qkv, y_qkv), (x, w_o, y_h), (x, w_i, y_i), (y_i, w_2, y_h)]

    def step():
        for _ in range(cfg.num_hidden_layers):
            for inp, w, _ in linears:
                np.matmul(inp, w.T)
            np.matmul(q, k.swapaxes(-1, -2))
            np.matmul(probs, v)
            if train:
                for inp, w, dy in linears:
                    np.matmul(dy, w)
                    np.matmul(dy.T, inp)
                np.matmul(q, v.swapaxes(-1, -2))   # dprobs = dctx v^T
                np.matmul(probs.swapaxes(-1, -2), q)  # dv = probs^T dctx
                np.matmul(probs, k)                # dq
                np.matmul(probs.swapaxes(-1, -2), q)  # dk

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a hadref model file (default: convert minilm in memory)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side (median)")
    parser.add_argument("--shapes", default="all",
                        help="comma list out of: train64, train256, forward128 (default all)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the plain-NumPy and GEMM-floor sides")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default) or this process's CPU time: with "
                             "OPENBLAS_NUM_THREADS=1 the CPU time hardly depends on what "
                             "else runs on the machine")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep (default, as hadref finetune/distill do): glibc keeps freed "
                             "arrays for reuse instead of unmapping them (hadref.train.memory); "
                             "default: glibc's own thresholds, every large array page-faults")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    keys = {"train64": SHAPES[0], "train256": SHAPES[1], "forward128": SHAPES[2]}
    shapes = SHAPES if args.shapes == "all" else [keys[k] for k in args.shapes.split(",")]

    model = make_model(args.model)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    kept = args.malloc == "keep" and keep_freed_memory()
    malloc = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    malloc = "malloc keeps freed memory" if kept else malloc
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load1:.2f}; numpy {np.__version__}; {args.clock} clock; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; "
          f"{malloc or 'glibc malloc defaults'}; medians of {args.repeats}", flush=True)
    print(f"# quoted PyTorch columns: not measured in this run ({PYTORCH_SOURCE})", flush=True)
    print(f"{'shape':18} {'hadref ms':>10} {'numpy ms':>10} {'numpy/hadref':>12} "
          f"{'gemm ms':>8} {'hadref/gemm':>11} {'PyTorch quoted':>14} {'hadref/quoted':>13}",
          flush=True)
    results = []
    sides = ["hadref"] + ([] if args.no_baseline else ["numpy", "gemm"])
    for name, train, batch, seq in shapes:
        times = {side: [] for side in sides}
        steps = {}
        for side in sides:  # separate models: each side's Adam state is its own
            steps[side] = (make_gemm_floor(model, train, batch, seq) if side == "gemm"
                           else make_step(model.copy(), train, batch, seq))
        for side in sides:  # warm-up (Numba compilation or cache load, page faults)
            with plain_numpy() if side == "numpy" else _null():
                steps[side]()
        for _ in range(args.repeats):
            for side in sides:
                with plain_numpy() if side == "numpy" else _null():
                    t0 = clock()
                    steps[side]()
                    times[side].append(1e3 * (clock() - t0))
        med = {side: statistics.median(v) for side, v in times.items()}
        nan = float("nan")
        print(f"{name:18} {med['hadref']:10.0f} {med.get('numpy', nan):10.0f} "
              f"{med.get('numpy', nan) / med['hadref']:12.2f} {med.get('gemm', nan):8.0f} "
              f"{med['hadref'] / med.get('gemm', nan):11.2f} {PYTORCH_MS[name]:14.0f} "
              f"{med['hadref'] / PYTORCH_MS[name]:13.2f}", flush=True)
        results.append({"shape": name, "train": train, "batch": batch, "seq": seq,
                        "ms": {k: v for k, v in times.items()}, "median_ms": med,
                        "pytorch_ms_quoted": PYTORCH_MS[name], "pytorch_source": PYTORCH_SOURCE})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"load_average": load1, "clock": args.clock,
                                               "results": results}, indent=2))
    return 0


@contextmanager
def _null():
    yield


if __name__ == "__main__":
    sys.exit(main())
