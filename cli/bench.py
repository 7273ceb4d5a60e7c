"""``hadref bench``: HAD attention on packed bits against dense float attention.

Generated inputs (no weights): q, k, v ~ N(0, 1) float32 of shape (batch, heads, seq, dim),
N = round(0.117 * seq) (the paper's ratio: 30 at 256, 120 at 1024) unless ``--top-n``.
Per sequence length it times, after one warm-up call each, ``--repeat`` runs of dense
attention, then (after ``BLAS_SPIN_PAUSE_S`` of busy waiting, so that OpenBLAS's worker
threads, which spin for about 0.1 s after a product, have gone to sleep before the Numba
threads need the cores) ``--repeat`` rounds of HAD and its stages, and reports medians:

* dense float attention: ``hadref.float_attention`` (NumPy/BLAS: S = QK^T, stable softmax
  in place, AV; one (seq, seq) matrix per head at a time);
* HAD attention: ``hadref.had_attention`` (checks, pack, then the fused tile kernel);
* the fused kernel's own split, on the packed inputs: runs stopped after the popcount
  levels, after the top-N selection, and complete; each stage is the median of the
  per-round differences (the kernel never materializes the top-N indices);
* the stages run apart (the path of ``hamming_topn``): pack q and k, popcount + top-N
  (the ordered indices of every row, one head at a time: the output a k-NN search such as
  FAISS gives), softmax + AV from those indices.

Extra memory is the peak of NumPy allocations during one call (``tracemalloc``, which sees
every array including the kernels' workspaces, all allocated on the NumPy side) minus the
output. The error of HAD against float attention on the same inputs: the relative output
error ``||O_had - O_float|| / ||O_float||`` and the recall of the float top-N set (the N
largest ``q.k`` of a row) by HAD's top-N set, over up to ``--recall-rows`` rows per head.
"""

from __future__ import annotations

import json as _json
import os
import sys
import time
import tracemalloc

import click
import numpy as np

from hadref.checks import worker_chunks
from hadref.cli._common import parse_int_list
from hadref.errors import HadrefError

PAPER_RATIO = 0.117  # N / context of the paper: 15/30/60/120 at 128/256/512/1024


def default_top_n(seq: int) -> int:
    """The paper's N for a context length: round(0.117 * seq), at least 1."""
    return max(1, round(PAPER_RATIO * seq))


def _median_ms(samples) -> float:
    return float(np.median(samples) * 1e3)


def _peak_extra_bytes(fn, result_bytes: int) -> int:
    """Peak NumPy allocation during fn() minus the result it returns (both counted)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del out
    return max(0, peak - result_bytes)


_STAGE_INDEX_BYTES = 256 * 2**20  # the top-N indices held at once by the staged run


class _Stages:
    """HAD attention split into its three stages. The (seq, N) indices are materialized for
    as many (batch, head) groups at once as fit in 256 MiB (all of them at 1024 tokens,
    one at a time at 16384); the fused path holds none."""

    def __init__(self, q, k, v, top_n):
        from hadref.had import attention as hamming

        self._h = hamming
        self.lead, (self.n, self.d), self.dv = q.shape[:-2], q.shape[-2:], v.shape[-1]
        self.q = q.reshape(-1, self.n, self.d)
        self.k = k.reshape(-1, self.n, self.d)
        self.v = v.reshape(-1, self.n, self.dv)
        self.top_n = min(top_n, self.n)
        groups = self.q.shape[0]
        self.valid = np.ones((groups, self.n), np.bool_)
        self.valid_before = hamming._valid_before(self.valid, self.n)
        c = worker_chunks(self.n)
        words = (self.d + 63) // 64
        self.q_bits = np.empty((groups, self.n, words), np.uint64)
        self.k_bits = np.empty((groups, self.n, words), np.uint64)
        self.per_call = int(max(1, min(groups, _STAGE_INDEX_BYTES // (self.n * self.top_n * 6))))
        self.idx = np.empty((self.per_call, self.n, self.top_n), np.int32)
        self.lev = np.empty((self.per_call, self.n, self.top_n), np.int16)
        self.count = np.empty((self.per_call, self.n), np.int32)
        self.ws = (np.empty((c, self.n), np.int16), hamming._marks(c, self.n),
                   np.empty((c, self.top_n), np.int32),
                   np.empty((c, self.top_n), np.int16), np.empty((c, self.d + 2), np.int32))
        self.av_ws = (np.empty((c, self.d + 2), v.dtype), np.empty((c, self.dv), v.dtype))
        self.out = np.empty((groups, self.n, self.dv), v.dtype)
        self.two_scale = hamming._two_scale(1.0, 1.0, self.d)

    def pack(self):
        from hadref.had.kernels.pack import pack_rows

        pack_rows(self.q.reshape(-1, self.d), self.q_bits.reshape(-1, self.q_bits.shape[-1]))
        pack_rows(self.k.reshape(-1, self.d), self.k_bits.reshape(-1, self.k_bits.shape[-1]))

    def fused_split(self):
        """The fused kernel on the packed inputs, stopped after each of its three stages;
        returns the cumulative seconds (levels, + top-N selection, + softmax and AV)."""
        valid = self.valid
        ends = []
        for last_stage in (1, 2, 3):
            t0 = time.perf_counter()
            self._h._attend(self.q_bits, self.k_bits, self.v, valid, self.n, self.d,
                            self.top_n, self.two_scale, False, last_stage=last_stage)
            ends.append(time.perf_counter() - t0)
        return ends

    def topn_and_av(self):
        """Both remaining stages, groups in batches; returns (topn seconds, av seconds)."""
        from hadref.had.kernels import fused

        t_topn = t_av = 0.0
        for g in range(0, self.q.shape[0], self.per_call):
            sl = slice(g, g + self.per_call)
            count = min(self.per_call, self.q.shape[0] - g)
            t0 = time.perf_counter()
            fused.topn_packed(self.q_bits[sl], self.k_bits[sl], self.valid[sl],
                              self.valid_before[sl], self.n, self.d, self.top_n, False,
                              self.idx[:count], self.lev[:count], self.count[:count], *self.ws)
            t1 = time.perf_counter()
            fused.attend_from_topn(self.idx[:count], self.lev[:count], self.count[:count],
                                   self.v[sl], self.two_scale, self.out[sl], *self.av_ws)
            t2 = time.perf_counter()
            t_topn += t1 - t0
            t_av += t2 - t1
        return t_topn, t_av


def _recall(q, k, top_n, rows_per_head, rng):
    """Mean |float top-N set & HAD top-N set| / N over sampled rows of every head."""
    from hadref.had import attention as hamming

    n, d = q.shape[-2:]
    qf, kf = q.reshape(-1, n, d), k.reshape(-1, n, d)
    take = min(n, rows_per_head)
    top_n = min(top_n, n)
    hits = 0
    for g in range(qf.shape[0]):
        rows = np.sort(rng.choice(n, size=take, replace=False))
        scores = qf[g, rows] @ kf[g].T  # (take, n) float32
        float_top = np.argpartition(-scores, top_n - 1, axis=1)[:, :top_n]
        had_idx, _ = hamming.hamming_topn(hamming.pack_signs(qf[g, rows]),
                                          hamming.pack_signs(kf[g]), d, top_n)
        for r in range(take):
            hits += np.intersect1d(float_top[r], had_idx[r], assume_unique=True).size
    return hits / (qf.shape[0] * take * top_n)


BLAS_SPIN_PAUSE_S = 0.25  # > OpenBLAS's default spin time (2**28 cycles)


def _busy_wait(seconds: float) -> None:
    """Keep this thread on its core for ``seconds`` (a sleep would let the cores clock down)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else physical memory, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_needed(seq: int, heads: int, dim: int, batch: int) -> dict:
    """Bytes a run of :func:`run_bench` holds at once, roughly: q, k, v, the two outputs
    and the staged path's output (float32), the packed bits, the staged top-N buffers
    (at most 256 MiB), and dense attention's (seq, seq) float32 scores of one head with
    one temporary of the same size."""
    elems = batch * heads * seq * dim
    arrays = 6 * elems * 4 + 2 * batch * heads * seq * ((dim + 63) // 64) * 8
    scores = 2 * seq * seq * 4
    topn = min(_STAGE_INDEX_BYTES, batch * heads * seq * default_top_n(seq) * 10)
    return {"arrays": arrays, "scores": scores, "total": arrays + scores + topn}


def check_memory(seq: int, heads: int, dim: int, batch: int) -> None:
    """HadrefError naming --seq when one run would need more memory than is available."""
    need = memory_needed(seq, heads, dim, batch)
    avail = _available_bytes()
    if avail is not None and need["total"] > avail:
        gib = 2**30
        raise HadrefError(f"--seq {seq}: needs about {need['total'] / gib:.1f} GiB (q, k, v and "
                          f"outputs {need['arrays'] / gib:.1f} GiB, dense attention's {seq} x "
                          f"{seq} scores {need['scores'] / gib:.1f} GiB), this machine has "
                          f"{avail / gib:.1f} GiB available: choose a shorter --seq or a "
                          "smaller --batch / --heads")


CALIBRATION_ROUNDS = 5  # best of: the calibration loops' fastest round is the machine's rate


def _best_rate(fn, units: float, rounds: int = CALIBRATION_ROUNDS) -> float:
    """units / the fastest of ``rounds`` timed calls of fn (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return units / best


def calibrate(dim: int = 64) -> dict:
    """This core's rates on L1-resident data (``hadref.had.kernels.rates``), one thread:
    XOR-popcount word pairs/s, 32-lane counting keys/s (with the tile kernel's level type
    for head size ``dim``) and float32 FMAs/s (8 independent chains of vector FMAs)."""
    from hadref.had import attention as hamming
    from hadref.had.kernels import rates, simd

    rng = np.random.default_rng(0)
    q_lanes = rng.integers(0, 2**63, simd.LANES, dtype=np.uint64)
    keys = rng.integers(0, 2**63, 1024, dtype=np.uint64)
    reps = 200
    popcount = _best_rate(lambda: rates.xor_popcount_words(q_lanes, keys, reps),
                          simd.LANES * keys.size * reps)
    lev_type = np.uint8 if dim <= hamming._LEVELS8_MAX_D else np.uint16
    lev = rng.integers(0, min(dim, 200) + 1, (255, simd.LANES)).astype(lev_type)
    probe = np.full(simd.LANES, min(dim, 200) // 2, np.uint16)
    count = np.zeros(simd.LANES, np.int64)
    count_reps = 2000
    counting = _best_rate(lambda: rates.count_keys(lev, probe, count, count_reps),
                          lev.shape[0] * count_reps)
    lanes = rates.fma_vector_lanes()
    fma = rates.fma_loop_for(lanes)
    start = rng.random(rates.chains() * lanes).astype(np.float32)
    fma_reps = 200_000
    fmas = _best_rate(lambda: fma(start, fma_reps), rates.chains() * lanes * fma_reps)
    return {"xor_popcount_words_per_s": popcount, "count_keys_per_s": counting,
            "fma_per_s": fmas, "fma_vector_lanes": lanes,
            "level_bits": 8 * np.dtype(lev_type).itemsize}


def stage_floors_ms(rates: dict, groups: int, seq: int, dim: int, top_n: int,
                    threads: int) -> dict:
    """The fused kernel's stages at this machine's calibrated rates, ``threads`` cores:

    * levels: every (query, key) pair's ceil(d/64) words XOR-popcounted once;
    * top-N selection: three 32-lane passes over each tile's levels (a counting probe at
      the guessed threshold, one confirming probe, the pick pass) at the counting rate;
    * softmax + AV: N_eff * dv FMAs per query row at the FMA units' throughput.
    """
    words = (dim + 63) // 64
    tiles = (seq + 31) // 32
    scale = 1e3 / threads
    return {
        "levels": groups * seq * seq * words / rates["xor_popcount_words_per_s"] * scale,
        "topn": 3 * groups * tiles * seq / rates["count_keys_per_s"] * scale,
        "softmax_av": groups * seq * min(top_n, seq) * dim / rates["fma_per_s"] * scale,
    }


def run_bench(seq: int, heads: int = 12, dim: int = 64, top_n: int | None = None,
              batch: int = 1, repeat: int = 5, recall_rows: int = 256, seed: int = 0,
              progress=None, rates: dict | None = None) -> dict:
    """Measure one sequence length; returns a dict of the figures (ms, bytes, ratios).
    rates: ``calibrate(dim)`` (measured here when not given), for the stages' floors."""
    import numba

    from hadref.had import attention as hamming

    if rates is None:
        rates = calibrate(dim)

    n_sel = default_top_n(seq) if top_n is None else top_n
    rng = np.random.default_rng(seed)
    shape = (batch, heads, seq, dim)
    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    say = progress or (lambda message: None)

    stages = _Stages(q, k, v, n_sel)
    # warm-up: compiles (first run only, then cached on disk) and touches the memory
    say(f"seq {seq}: warm-up")
    dense_out = hamming.float_attention(q, k, v)
    had_out = hamming.had_attention(q, k, v, n_sel)
    stages.pack()
    stages.topn_and_av()
    stages.fused_split()   # the split runs too: no first-call cost inside a timed repeat
    if not np.allclose(stages.out.reshape(had_out.shape), had_out, rtol=1e-5, atol=1e-6):
        raise RuntimeError("bench: the staged kernels disagree with had_attention")

    times = {"dense": [], "had": [], "pack": [], "topn": [], "av": [], "fused": [],
             "fused_levels": [], "fused_topn": [], "fused_av": []}
    # Two phases, not interleaved: OpenBLAS's worker threads spin for ~0.1 s after every
    # product and would take a core from the Numba threads (measured: HAD at 2 threads
    # slower than at 1), and a sleep between the two lets the cores clock down (measured:
    # everything after it ~20 % slower). So dense runs its repeats, the main thread stays
    # busy while the BLAS workers time out, then HAD and its stages run theirs.
    for r in range(repeat):
        say(f"seq {seq}: dense, repeat {r + 1}/{repeat}")
        t0 = time.perf_counter()
        hamming.float_attention(q, k, v)
        times["dense"].append(time.perf_counter() - t0)
    _busy_wait(BLAS_SPIN_PAUSE_S)
    for r in range(repeat):
        say(f"seq {seq}: HAD, repeat {r + 1}/{repeat}")
        t1 = time.perf_counter()
        hamming.had_attention(q, k, v, n_sel)
        t2 = time.perf_counter()
        stages.pack()
        t3 = time.perf_counter()
        t_topn, t_av = stages.topn_and_av()
        levels, selected, full = stages.fused_split()
        times["fused"].append(full)
        times["fused_levels"].append(levels)
        times["fused_topn"].append(selected - levels)
        times["fused_av"].append(full - selected)
        times["had"].append(t2 - t1)
        times["pack"].append(t3 - t2)
        times["topn"].append(t_topn)
        times["av"].append(t_av)

    say(f"seq {seq}: memory and error")
    out_bytes = dense_out.nbytes
    mem_dense = _peak_extra_bytes(lambda: hamming.float_attention(q, k, v), out_bytes)
    mem_had = _peak_extra_bytes(lambda: hamming.had_attention(q, k, v, n_sel), out_bytes)
    rel_err = float(np.linalg.norm((had_out - dense_out).ravel())
                    / np.linalg.norm(dense_out.ravel()))
    recall = _recall(q, k, n_sel, recall_rows, np.random.default_rng(seed + 1))
    med = {name: _median_ms(samples) for name, samples in times.items()}
    words = (dim + 63) // 64
    return {
        "seq": seq, "heads": heads, "dim": dim, "batch": batch, "top_n": n_sel,
        "repeat": repeat,
        "dense_ms": med["dense"], "had_ms": med["had"], "pack_ms": med["pack"],
        "popcount_topn_ms": med["topn"], "softmax_av_ms": med["av"],
        "fused_ms": med["fused"], "fused_levels_ms": med["fused_levels"],
        "fused_topn_ms": med["fused_topn"], "fused_softmax_av_ms": med["fused_av"],
        "speedup": med["dense"] / med["had"],
        "floor_ms": stage_floors_ms(rates, batch * heads, seq, dim, n_sel,
                                    numba.get_num_threads()),
        "rates": rates,
        "dense_extra_bytes": mem_dense, "had_extra_bytes": mem_had,
        "key_bytes_per_token_packed": heads * words * 8,
        "key_bytes_per_token_float32": heads * dim * 4,
        "relative_output_error": rel_err, "recall_float_topn": recall,
        "recall_rows_per_head": min(seq, recall_rows),
        "samples_ms": {name: [s * 1e3 for s in samples] for name, samples in times.items()},
    }


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def _floor(ms: float, floor: float) -> str:
    return f"   floor {floor:6.2f} ms = {ms / floor:4.1f}x"


def format_table(results: list[dict], threads: int) -> str:
    lines = []
    for r in results:
        lines += [
            f"seq {r['seq']}: batch {r['batch']} x {r['heads']} heads, d {r['dim']}, "
            f"N {r['top_n']}; median of {r['repeat']} repeats (dense, then HAD), {threads} Numba "
            f"thread(s)",
            f"  {'':34}{'median ms':>11}{'speed-up':>10}{'extra memory':>15}",
            f"  {'dense float (NumPy BLAS)':34}{r['dense_ms']:11.2f}{1.0:9.2f}x"
            f"{_mib(r['dense_extra_bytes']):>15}",
            f"  {'HAD total (pack + fused kernel)':34}{r['had_ms']:11.2f}{r['speedup']:9.2f}x"
            f"{_mib(r['had_extra_bytes']):>15}",
            f"  {'  fused kernel (packed inputs)':34}{r['fused_ms']:11.2f}",
            f"  {'    popcount levels':34}{r['fused_levels_ms']:11.2f}"
            f"{_floor(r['fused_levels_ms'], r['floor_ms']['levels'])}",
            f"  {'    top-N selection':34}{r['fused_topn_ms']:11.2f}"
            f"{_floor(r['fused_topn_ms'], r['floor_ms']['topn'])}",
            f"  {'    softmax + AV':34}{r['fused_softmax_av_ms']:11.2f}"
            f"{_floor(r['fused_softmax_av_ms'], r['floor_ms']['softmax_av'])}",
            "    stages run apart:",
            f"  {'    pack q, k':34}{r['pack_ms']:11.2f}",
            f"  {'    popcount + top-N (indices)':34}{r['popcount_topn_ms']:11.2f}",
            f"  {'    softmax + AV from indices':34}{r['softmax_av_ms']:11.2f}",
            "  (fused split: runs stopped after each stage, median differences; apart: "
            "the ordered top-N indices of every row are materialized, as hamming_topn)",
            f"  floors: the stage at this core's calibrated rates x {threads} thread(s) "
            f"({r['rates']['xor_popcount_words_per_s'] / 1e9:.2f} G XOR-popcount words/s, "
            f"{r['rates']['count_keys_per_s'] / 1e9:.2f} G keys/s counted in 32 "
            f"{r['rates']['level_bits']}-bit lanes, "
            f"{r['rates']['fma_per_s'] / 1e9:.1f} G float32 FMA/s); "
            "levels: every pair once, top-N: 3 counting passes, AV: N dv FMAs per row",
            f"  key cache per token: {r['key_bytes_per_token_packed']} B packed vs "
            f"{r['key_bytes_per_token_float32']} B float32 "
            f"({r['key_bytes_per_token_float32'] / r['key_bytes_per_token_packed']:.0f}x smaller)",
            f"  HAD vs float: relative output error {r['relative_output_error']:.3f}, recall "
            f"of the float top-{r['top_n']} set {r['recall_float_topn']:.3f} "
            f"({r['recall_rows_per_head']} rows/head)",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def _plot(results: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HadrefError("--plot: needs matplotlib (pip install 'hadref[plot]')") from None
    seqs = [r["seq"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, label, style in (("dense_ms", "dense float (NumPy BLAS)", "o-"),
                              ("had_ms", "HAD total", "s-"),
                              ("fused_levels_ms", "fused: popcount levels", "^-"),
                              ("fused_topn_ms", "fused: top-N selection", "<-"),
                              ("fused_softmax_av_ms", "fused: softmax + AV", "v-"),
                              ("popcount_topn_ms", "apart: popcount + top-N (indices)", "^--"),
                              ("softmax_av_ms", "apart: softmax + AV", "v--"),
                              ("pack_ms", "HAD pack", "x:")):
        # a stage's median difference can be <= 0 on a noisy machine: not drawable in log
        ax.plot(seqs, [r[key] if r[key] > 0 else np.nan for r in results], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("median time (ms)")
    r0 = results[0]
    ax.set_title(f"attention, batch {r0['batch']} x {r0['heads']} heads, d {r0['dim']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from hadref.files import atomic_file

    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    except OSError as err:
        raise HadrefError(f"--plot: cannot write {path}: {err.strerror}") from None
    finally:
        plt.close(fig)


@click.command()
@click.option("--seq", "seq_text", default="1024", show_default=True,
              help="Sequence length(s), comma-separated, e.g. 256,1024,4096.")
@click.option("--heads", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--dim", type=click.IntRange(1, 32766), default=64, show_default=True,
              help="Head size d.")
@click.option("--top-n", type=click.IntRange(min=1), default=None,
              help="N kept per query row [default: round(0.117 * seq), the paper's ratio].")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed rounds after one warm-up; medians are reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Numba threads [default: all]. BLAS keeps its own setting "
                   "(OPENBLAS_NUM_THREADS).")
@click.option("--recall-rows", type=click.IntRange(min=1), default=256, show_default=True,
              help="Rows per head sampled for the recall of the float top-N set.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write time against sequence length (log-log) to this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --plot file.")
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
def bench(seq_text, heads, dim, top_n, batch, repeat, threads, recall_rows, seed, as_json,
          plot, overwrite, quiet):
    """Time HAD attention (packed bits, top-N) against dense float attention.

    Generated inputs, no weights needed: q, k, v ~ N(0, 1) float32 (batch, heads, seq,
    dim). Prints median ms per stage, the speed-up, extra memory, key-cache bytes per token
    and the error of HAD against float attention on the same inputs.
    """
    import numba

    seqs = parse_int_list(seq_text, "--seq")
    for seq in seqs:   # before allocating anything
        check_memory(seq, heads, dim, batch)
    if plot:
        from hadref.files import claim_outputs

        claim_outputs({"--plot": plot}, overwrite=overwrite)
    if threads is not None:
        if threads > numba.config.NUMBA_NUM_THREADS:
            raise HadrefError(f"--threads: at most {numba.config.NUMBA_NUM_THREADS} on this "
                              f"machine (NUMBA_NUM_THREADS), got {threads}")
        numba.set_num_threads(threads)
    used_threads = numba.get_num_threads()

    def progress(message):  # stderr, so that --json output stays clean
        if not quiet:
            click.echo(f"  ... {message}", err=True)

    progress("calibrating this core's XOR-popcount, counting and FMA rates")
    rates = calibrate(dim)
    results = []
    for seq in seqs:
        results.append(run_bench(seq, heads, dim, top_n, batch, repeat, recall_rows, seed,
                                 progress, rates))
        if not as_json:
            click.echo(format_table(results[-1:], used_threads))
    if as_json:
        click.echo(_json.dumps({"threads": used_threads, "results": results}, indent=2))
    if plot:
        _plot(results, plot)
        if not as_json:
            click.echo(f"plot written to {plot}")
    sys.stdout.flush()


__all__ = ["bench", "run_bench", "calibrate", "stage_floors_ms", "default_top_n",
           "format_table"]
