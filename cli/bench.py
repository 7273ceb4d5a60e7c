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

Options change what is compared: ``--causal`` (query i sees keys j <= i, both paths),
``--kv-heads H`` (grouped queries: k and v have H heads, query head j uses key head
``j // (heads / H)``; HAD reads the H packed key heads, never a copy per query head; the
float reference runs each query head of a group against the same float key head),
``--decode`` (one query row per head after a cache of ``--seq`` keys: the per-token cost
of decoding, HAD on a ``PackedKeyCache`` against one query's dense attention over the
float cache) and ``--no-dense`` (no float reference). Dense float attention is also
skipped, with one line saying so, when its (seq, seq) scores would not fit in the memory
available (``MemAvailable``, or the byte count in ``HADREF_BENCH_MEMORY``, for tests).

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
    one at a time at 16384); the fused path holds none. k, v may have fewer heads than q
    (grouped queries): the drivers' kv_group reads each key head for its query heads."""

    def __init__(self, q, k, v, top_n, causal=False):
        from hadref.had import attention as hamming
        from hadref.had import workspaces

        self._h = hamming
        self.causal = bool(causal)
        self.lead, (self.n, self.d), self.dv = q.shape[:-2], q.shape[-2:], v.shape[-1]
        self.kv_group = q.shape[-3] // k.shape[-3]
        self.q = q.reshape(-1, self.n, self.d)
        self.k = k.reshape(-1, self.n, self.d)
        self.v = v.reshape(-1, self.n, self.dv)
        self.top_n = min(top_n, self.n)
        groups, kv_groups = self.q.shape[0], self.k.shape[0]
        self.valid = np.ones((kv_groups, self.n), np.bool_)
        self.valid_before = hamming._valid_before(self.valid, self.n)
        words = (self.d + 63) // 64
        self.q_bits = np.empty((groups, self.n, words), np.uint64)
        self.k_bits = np.empty((kv_groups, self.n, words), np.uint64)
        per_call = max(1, min(groups, _STAGE_INDEX_BYTES // (self.n * self.top_n * 6)))
        # whole key heads per call: a multiple of the query heads that share one
        self.per_call = int(max(self.kv_group, per_call // self.kv_group * self.kv_group))
        self.idx = np.empty((self.per_call, self.n, self.top_n), np.int32)
        self.lev = np.empty((self.per_call, self.n, self.top_n), np.int16)
        self.count = np.empty((self.per_call, self.n), np.int32)
        rows = self.per_call * self.n  # query rows of one call of either stage
        self.topn_ws = workspaces.topn_workspace(rows, self.n, self.d, self.top_n)
        self.av_ws = workspaces.softmax_av_workspace(rows, self.d, self.dv, v.dtype)
        self.out = np.empty((groups, self.n, self.dv), v.dtype)
        self.two_scale = hamming._two_scale(1.0, 1.0, self.d)

    def pack(self):
        from hadref.had.kernels.pack import pack_rows

        pack_rows(self.q.reshape(-1, self.d), self.q_bits.reshape(-1, self.q_bits.shape[-1]))
        pack_rows(self.k.reshape(-1, self.d), self.k_bits.reshape(-1, self.k_bits.shape[-1]))

    def fused_split(self):
        """The fused kernel on the packed inputs, stopped after each of its three stages;
        returns the cumulative seconds (levels, + top-N selection, + softmax and AV)."""
        ends = []
        for stop_after in ("levels", "select", None):
            t0 = time.perf_counter()
            self._h._attend(self.q_bits, self.k_bits, self.v, self.valid, self.n, self.d,
                            self.top_n, self.two_scale, self.causal, stop_after=stop_after,
                            kv_group=self.kv_group)
            ends.append(time.perf_counter() - t0)
        return ends

    def topn_and_av(self):
        """Both remaining stages, groups in batches; returns (topn seconds, av seconds)."""
        from hadref.had.kernels import fused

        t_topn = t_av = 0.0
        for g in range(0, self.q.shape[0], self.per_call):
            sl = slice(g, g + self.per_call)
            kv = slice(g // self.kv_group, (g + self.per_call) // self.kv_group)
            count = min(self.per_call, self.q.shape[0] - g)
            t0 = time.perf_counter()
            fused.topn_packed(self.q_bits[sl], self.k_bits[kv], self.valid[kv],
                              self.valid_before[kv], self.n, self.d, self.top_n, 0.0, self.causal,
                              self.idx[:count], self.lev[:count], self.count[:count],
                              *self.topn_ws, kv_group=self.kv_group)
            t1 = time.perf_counter()
            fused.attend_from_topn(self.idx[:count], self.lev[:count], self.count[:count],
                                   self.v[kv], self.two_scale, self.out[sl], *self.av_ws,
                                   kv_group=self.kv_group)
            t2 = time.perf_counter()
            t_topn += t1 - t0
            t_av += t2 - t1
        return t_topn, t_av


def _kv_index(g: int, heads: int, kv_heads: int) -> int:
    """Flattened (batch, key head) index of flattened (batch, query head) g."""
    b, h = divmod(g, heads)
    return b * kv_heads + h // (heads // kv_heads)


def _top_set(scores: np.ndarray, take: int) -> np.ndarray:
    """Indices of the ``take`` largest of a 1-D score row (any order)."""
    if take >= scores.size:
        return np.arange(scores.size)
    return np.argpartition(-scores, take - 1)[:take]


def _had_top_set(signs: np.ndarray, take: int) -> np.ndarray:
    """The kernels' top-N of a row of integer sign dot products: ties to the lower index."""
    n = signs.size
    key = np.rint(signs).astype(np.int64) * (n + 1) + (n - 1 - np.arange(n))
    return _top_set(key, take)


def _recall(q, k, top_n, rows_per_head, rng, causal=False):
    """Mean |float top-N set & HAD top-N set| / N_eff over sampled rows of every query
    head (k may have fewer heads: grouped queries). HAD's set is the top-N of the +-1
    sign dot products (exact integers), ties to the lower key index, as the kernels;
    causal: row i ranks keys 0..i only, N_eff = min(N, i + 1)."""
    heads, kv_heads = q.shape[-3], k.shape[-3]
    n, d = q.shape[-2:]
    qf, kf = q.reshape(-1, n, d), k.reshape(-1, n, d)
    take = min(n, rows_per_head)
    hits = total = 0
    for g in range(qf.shape[0]):
        keys = kf[_kv_index(g, heads, kv_heads)]
        rows = np.sort(rng.choice(n, size=take, replace=False))
        scores = qf[g, rows] @ keys.T  # (take, n) float32
        signs = np.where(qf[g, rows] >= 0, 1.0, -1.0).astype(np.float32) @ \
            np.where(keys >= 0, 1.0, -1.0).astype(np.float32).T  # exact: |entries| <= d
        for r, i in enumerate(rows):
            limit = i + 1 if causal else n
            n_eff = min(top_n, limit)
            float_top = _top_set(scores[r, :limit], n_eff)
            had_top = _had_top_set(signs[r, :limit], n_eff)
            hits += np.intersect1d(float_top, had_top, assume_unique=True).size
            total += n_eff
    return hits / total


def _dense_attention(q, k, v, causal=False):
    """Dense float attention; with grouped queries (k, v with fewer heads) each query head
    of a group runs against its group's key and value heads (no copy of k or v)."""
    from hadref.had import attention as hamming

    heads, kv_heads = q.shape[-3], k.shape[-3]
    if heads == kv_heads:
        return hamming.float_attention(q, k, v, causal=causal)
    group = heads // kv_heads
    batch, _, m, d = q.shape
    qg = q.reshape(batch, kv_heads, group, m, d)
    out = np.empty((batch, kv_heads, group, m, v.shape[-1]), v.dtype)
    for j in range(group):
        out[:, :, j] = hamming.float_attention(qg[:, :, j], k, v, causal=causal)
    return out.reshape(batch, heads, m, v.shape[-1])


BLAS_SPIN_PAUSE_S = 0.25  # > OpenBLAS's default spin time (2**28 cycles)


def _busy_wait(seconds: float) -> None:
    """Keep this thread on its core for ``seconds`` (a sleep would let the cores clock down)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


MEMORY_ENV = "HADREF_BENCH_MEMORY"  # bytes available to the bench (tests); else MemAvailable


def _available_bytes() -> int | None:
    """``HADREF_BENCH_MEMORY`` (bytes) when set, else MemAvailable of /proc/meminfo
    (Linux), else physical memory, else None."""
    text = os.environ.get(MEMORY_ENV)
    if text is not None:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise HadrefError(f"{MEMORY_ENV}: expected a byte count (an integer >= 1), "
                              f"got {text!r}")
        return value
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


def memory_needed(seq: int, heads: int, dim: int, batch: int, kv_heads: int | None = None,
                  decode: bool = False, recall_rows: int = 256) -> dict:
    """Bytes one run holds at once, roughly, split into what HAD needs and what the dense
    float reference adds (float32 throughout):

    * prefill, HAD: q, k, v, HAD's and the staged path's outputs, the packed bits (twice:
      the staged path keeps its own), the staged top-N buffers (at most 256 MiB) and the
      recall's two (rows, seq) score matrices; dense: one head's (seq, seq) scores with
      one temporary of the same size, and its output;
    * decode, HAD: the float k, v (the float cache), the packed cache (bits, its copy of
      v, the key flags); dense: one score row per head and a temporary.
    """
    kv_heads = heads if kv_heads is None else kv_heads
    words = (dim + 63) // 64
    q_elems = batch * heads * seq * dim
    kv_elems = batch * kv_heads * seq * dim
    if decode:
        had = 3 * kv_elems * 4 + batch * kv_heads * seq * (words * 8 + 1)
        dense = 2 * batch * heads * seq * 4
    else:
        bits = 2 * batch * (heads + kv_heads) * seq * words * 8
        topn = min(_STAGE_INDEX_BYTES, batch * heads * seq * default_top_n(seq) * 10)
        had = (q_elems + 2 * kv_elems) * 4 + 2 * q_elems * 4 + bits + topn
        had += 2 * min(seq, recall_rows) * seq * 4
        dense = 2 * seq * seq * 4 + q_elems * 4
    return {"had": had, "dense": dense, "total": had + dense}


def _mib(nbytes: int) -> str:
    """A byte count for people: GiB, MiB or KiB, one decimal."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


def plan_memory(seq: int, heads: int, dim: int, batch: int, kv_heads: int | None = None,
                decode: bool = False, recall_rows: int = 256) -> str | None:
    """None when the whole run fits in the memory available; the reason dense float
    attention is skipped when only HAD fits; HadrefError naming --seq when HAD alone
    does not."""
    need = memory_needed(seq, heads, dim, batch, kv_heads, decode, recall_rows)
    avail = _available_bytes()
    if avail is None or need["total"] <= avail:
        return None
    if need["had"] > avail:
        raise HadrefError(f"--seq {seq}: HAD alone needs about {_mib(need['had'])} (inputs, "
                          f"outputs, packed bits), {_mib(avail)} available: choose a shorter "
                          "--seq or a smaller --batch / --heads")
    what = "scores" if decode else f"{seq} x {seq} scores"
    return (f"dense float attention skipped: its {what} need {_mib(need['dense'])} more "
            f"than HAD's {_mib(need['had'])}, {_mib(avail)} available")


def check_heads(heads: int, kv_heads: int | None) -> int:
    """The key heads of a run: kv_heads (a divisor of heads), or heads when None."""
    if kv_heads is None:
        return heads
    if heads % kv_heads != 0:
        raise HadrefError(f"--kv-heads: expected a divisor of --heads {heads} (grouped "
                          f"queries share each key head among heads / kv-heads query heads), "
                          f"got {kv_heads}")
    return kv_heads


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
              progress=None, rates: dict | None = None, causal: bool = False,
              kv_heads: int | None = None, dense: bool = True) -> dict:
    """Measure one sequence length (prefill: seq query rows against seq keys); returns a
    dict of the figures (ms, bytes, ratios; None for what did not run). rates:
    ``calibrate(dim)`` (measured here when not given), for the stages' floors; causal:
    both paths causal; kv_heads: key heads (grouped queries, a divisor of heads); dense: False skips the float
    reference (it is skipped anyway, with ``dense_skipped`` saying why, when it would not
    fit in memory)."""
    import numba

    from hadref.had import attention as hamming

    kv_heads = check_heads(heads, kv_heads)
    skipped = plan_memory(seq, heads, dim, batch, kv_heads, False, recall_rows) if dense \
        else "dense float attention skipped: --no-dense"
    run_dense = skipped is None
    if rates is None:
        rates = calibrate(dim)

    n_sel = default_top_n(seq) if top_n is None else top_n
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, heads, seq, dim), dtype=np.float32)
    k, v = (rng.standard_normal((batch, kv_heads, seq, dim), dtype=np.float32)
            for _ in range(2))
    say = progress or (lambda message: None)

    def had():
        return hamming.had_attention(q, k, v, n_sel, causal=causal)

    def dense_run():
        return _dense_attention(q, k, v, causal)

    stages = _Stages(q, k, v, n_sel, causal)
    # warm-up: compiles (first run only, then cached on disk) and touches the memory
    say(f"seq {seq}: warm-up")
    dense_out = dense_run() if run_dense else None
    had_out = had()
    stages.pack()
    stages.topn_and_av()
    stages.fused_split()   # the split runs too: no first-call cost inside a timed repeat
    if not np.allclose(stages.out.reshape(had_out.shape), had_out, rtol=1e-5, atol=1e-6):
        raise RuntimeError("bench: the staged kernels disagree with had_attention")

    times = {"dense": [], "had": [], "pack": [], "topn": [], "av": [], "fused": [],
             "fused_levels": [], "fused_topn": [], "fused_av": []}
    # Two phases, not interleaved: OpenBLAS's worker threads spin for a while after every
    # product and would take a core from the Numba threads, and a sleep between the two
    # lets the cores clock down. So dense runs its repeats, the main thread stays busy
    # while the BLAS workers time out, then HAD and its stages run theirs.
    if run_dense:
        for r in range(repeat):
            say(f"seq {seq}: dense, repeat {r + 1}/{repeat}")
            t0 = time.perf_counter()
            dense_run()
            times["dense"].append(time.perf_counter() - t0)
        _busy_wait(BLAS_SPIN_PAUSE_S)
    for r in range(repeat):
        say(f"seq {seq}: HAD, repeat {r + 1}/{repeat}")
        t1 = time.perf_counter()
        had()
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
    out_bytes = had_out.nbytes
    mem_dense = _peak_extra_bytes(dense_run, out_bytes) if run_dense else None
    mem_had = _peak_extra_bytes(had, out_bytes)
    rel_err = None
    if run_dense:
        rel_err = float(np.linalg.norm((had_out - dense_out).ravel())
                        / np.linalg.norm(dense_out.ravel()))
    recall = _recall(q, k, n_sel, recall_rows, np.random.default_rng(seed + 1), causal)
    med = {name: _median_ms(samples) if samples else None for name, samples in times.items()}
    words = (dim + 63) // 64
    return {
        "mode": "prefill", "seq": seq, "heads": heads, "kv_heads": kv_heads, "dim": dim,
        "batch": batch, "top_n": n_sel, "repeat": repeat, "causal": bool(causal),
        "dense": run_dense, "dense_skipped": skipped,
        "dense_ms": med["dense"], "had_ms": med["had"], "pack_ms": med["pack"],
        "popcount_topn_ms": med["topn"], "softmax_av_ms": med["av"],
        "fused_ms": med["fused"], "fused_levels_ms": med["fused_levels"],
        "fused_topn_ms": med["fused_topn"], "fused_softmax_av_ms": med["fused_av"],
        "speedup": med["dense"] / med["had"] if run_dense else None,
        "floor_ms": stage_floors_ms(rates, batch * heads, seq, dim, n_sel,
                                    numba.get_num_threads()),
        "rates": rates,
        "dense_extra_bytes": mem_dense, "had_extra_bytes": mem_had,
        "key_bytes_per_token_packed": kv_heads * words * 8,
        "key_bytes_per_token_float32": kv_heads * dim * 4,
        "relative_output_error": rel_err, "recall_float_topn": recall,
        "recall_rows_per_head": min(seq, recall_rows),
        "samples_ms": {name: [s * 1e3 for s in samples] for name, samples in times.items()},
    }


DECODE_TOKENS = 8  # query tokens decoded per timed round of --decode


class _Decode:
    """One decoding step of every query head after ``n`` cached tokens: HAD on a
    ``PackedKeyCache`` of the keys (packed once) and their values, and one query's dense
    attention over the float cache (k, v kept as they are). With grouped queries the
    ``heads / kv_heads`` query heads of a key head are that head's query rows (no copy of
    the keys or values per query head). k, v: (B, H, n, d) float32."""

    def __init__(self, k, v, keep_float: bool = True):
        from hadref.had.cache import PackedKeyCache

        self.cache = PackedKeyCache(k, v)
        self.k, self.v = (k, v) if keep_float else (None, None)
        self.kv_heads = k.shape[1]

    def _rows(self, q):
        """(B, h, 1, d) -> (B, H, h / H, d): the query rows of each key head."""
        batch, heads, _, d = q.shape
        return q.reshape(batch, self.kv_heads, heads // self.kv_heads, d)

    def packed(self, q, top_n: int):
        """HAD of one token's queries q (B, h, 1, d) over the packed cache -> (B, h, 1, dv)."""
        out = self.cache.attend(self._rows(q), top_n)
        return out.reshape(*q.shape[:2], 1, out.shape[-1])

    def dense(self, q):
        """Dense float attention of q (B, h, 1, d) over the float cache -> (B, h, 1, dv)."""
        from hadref.had import attention as hamming

        out = hamming.float_attention(self._rows(q), self.k, self.v)
        return out.reshape(*q.shape[:2], 1, out.shape[-1])


def run_decode(seq: int, heads: int = 12, dim: int = 64, top_n: int | None = None,
               batch: int = 1, repeat: int = 5, seed: int = 0, progress=None,
               kv_heads: int | None = None, dense: bool = True) -> dict:
    """Measure decoding after a cache of seq tokens: per-token ms of one query row per
    head, HAD on packed keys against dense float attention over the float cache (timed
    rounds of ``DECODE_TOKENS`` distinct queries; appending the token's key and value is
    not timed), and the key-cache bytes per token of either. Arguments as
    :func:`run_bench`."""
    kv_heads = check_heads(heads, kv_heads)
    skipped = plan_memory(seq, heads, dim, batch, kv_heads, True) if dense \
        else "dense float attention skipped: --no-dense"
    run_dense = skipped is None
    n_sel = default_top_n(seq) if top_n is None else top_n
    rng = np.random.default_rng(seed)
    k, v = (rng.standard_normal((batch, kv_heads, seq, dim), dtype=np.float32)
            for _ in range(2))
    queries = rng.standard_normal((DECODE_TOKENS, batch, heads, 1, dim), dtype=np.float32)
    say = progress or (lambda message: None)
    step = _Decode(k, v, keep_float=run_dense)
    del k, v  # the cache (and the float path's references) hold what is needed

    say(f"decode after {seq} tokens: warm-up")
    had_out = [step.packed(q, n_sel) for q in queries]
    dense_out = [step.dense(q) for q in queries] if run_dense else None
    times = {"dense": [], "had": []}
    if run_dense:
        for r in range(repeat):
            say(f"decode after {seq} tokens: dense, repeat {r + 1}/{repeat}")
            t0 = time.perf_counter()
            for q in queries:
                step.dense(q)
            times["dense"].append((time.perf_counter() - t0) / DECODE_TOKENS)
        _busy_wait(BLAS_SPIN_PAUSE_S)
    for r in range(repeat):
        say(f"decode after {seq} tokens: HAD, repeat {r + 1}/{repeat}")
        t0 = time.perf_counter()
        for q in queries:
            step.packed(q, n_sel)
        times["had"].append((time.perf_counter() - t0) / DECODE_TOKENS)

    out_bytes = had_out[0].nbytes
    mem_had = _peak_extra_bytes(lambda: step.packed(queries[0], n_sel), out_bytes)
    mem_dense = rel_err = None
    if run_dense:
        mem_dense = _peak_extra_bytes(lambda: step.dense(queries[0]), out_bytes)
        diff = np.stack(had_out) - np.stack(dense_out)
        rel_err = float(np.linalg.norm(diff.ravel()) / np.linalg.norm(np.stack(dense_out)))
    med = {name: _median_ms(samples) if samples else None for name, samples in times.items()}
    words = (dim + 63) // 64
    key_packed, key_float, value = kv_heads * words * 8, kv_heads * dim * 4, kv_heads * dim * 4
    return {
        "mode": "decode", "seq": seq, "heads": heads, "kv_heads": kv_heads, "dim": dim,
        "batch": batch, "top_n": n_sel, "repeat": repeat, "tokens_per_round": DECODE_TOKENS,
        "dense": run_dense, "dense_skipped": skipped,
        "dense_ms_per_token": med["dense"], "had_ms_per_token": med["had"],
        "speedup": med["dense"] / med["had"] if run_dense else None,
        "had_tokens_per_s": batch * 1e3 / med["had"],
        "dense_tokens_per_s": batch * 1e3 / med["dense"] if run_dense else None,
        "key_bytes_per_token_packed": key_packed, "key_bytes_per_token_float32": key_float,
        "cache_bytes_per_token_packed": key_packed + value,
        "cache_bytes_per_token_float32": key_float + value,
        "dense_extra_bytes": mem_dense, "had_extra_bytes": mem_had,
        "relative_output_error": rel_err,
        "samples_ms": {name: [s * 1e3 for s in samples] for name, samples in times.items()},
    }


def _floor(ms: float, floor: float) -> str:
    return f"   floor {floor:6.2f} ms = {ms / floor:4.1f}x"


def _heads_text(r: dict) -> str:
    text = f"batch {r['batch']} x {r['heads']} heads"
    if r["kv_heads"] != r["heads"]:
        text += f" (grouped: {r['kv_heads']} key heads)"
    return text


def _prefill_lines(r: dict, threads: int) -> list[str]:
    causal = ", causal" if r["causal"] else ""
    lines = [
        f"seq {r['seq']}: {_heads_text(r)}, d {r['dim']}, N {r['top_n']}{causal}; median of "
        f"{r['repeat']} repeats (dense, then HAD), {threads} Numba thread(s)",
        f"  {'':34}{'median ms':>11}{'speed-up':>10}{'extra memory':>15}",
    ]
    if r["dense"]:
        lines += [f"  {'dense float (NumPy BLAS)':34}{r['dense_ms']:11.2f}{1.0:9.2f}x"
                  f"{_mib(r['dense_extra_bytes']):>15}",
                  f"  {'HAD total (pack + fused kernel)':34}{r['had_ms']:11.2f}"
                  f"{r['speedup']:9.2f}x{_mib(r['had_extra_bytes']):>15}"]
    else:
        lines += [f"  {r['dense_skipped']}",
                  f"  {'HAD total (pack + fused kernel)':34}{r['had_ms']:11.2f}{'':10}"
                  f"{_mib(r['had_extra_bytes']):>15}"]
    lines += [
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
    ]
    lines.append(_key_cache_line(r))
    error = (f"relative output error {r['relative_output_error']:.3f}, "
             if r["relative_output_error"] is not None else "")
    lines += [f"  HAD vs float: {error}recall of the float top-{r['top_n']} set "
              f"{r['recall_float_topn']:.3f} ({r['recall_rows_per_head']} rows/head)", ""]
    return lines


def _key_cache_line(r: dict) -> str:
    return (f"  key cache per token: {r['key_bytes_per_token_packed']} B packed vs "
            f"{r['key_bytes_per_token_float32']} B float32 "
            f"({r['key_bytes_per_token_float32'] / r['key_bytes_per_token_packed']:.0f}x "
            "smaller)")


def _decode_lines(r: dict, threads: int) -> list[str]:
    lines = [
        f"decode after {r['seq']} cached tokens: {_heads_text(r)}, d {r['dim']}, "
        f"N {r['top_n']}; one query row per head, median of {r['repeat']} rounds of "
        f"{r['tokens_per_round']} tokens (dense, then HAD), {threads} Numba thread(s)",
        f"  {'':34}{'ms/token':>11}{'tokens/s':>10}{'speed-up':>10}{'extra memory':>15}",
    ]
    if r["dense"]:
        lines.append(f"  {'float cache (NumPy BLAS)':34}{r['dense_ms_per_token']:11.3f}"
                     f"{r['dense_tokens_per_s']:10.0f}{1.0:9.2f}x"
                     f"{_mib(r['dense_extra_bytes']):>15}")
    else:
        lines.append(f"  {r['dense_skipped']}")
    speedup = f"{r['speedup']:9.2f}x" if r["speedup"] is not None else f"{'':10}"
    lines += [f"  {'HAD on packed keys (row kernel)':34}{r['had_ms_per_token']:11.3f}"
              f"{r['had_tokens_per_s']:10.0f}{speedup}{_mib(r['had_extra_bytes']):>15}",
              _key_cache_line(r),
              f"  cache per token (keys + float32 values): "
              f"{r['cache_bytes_per_token_packed']} B packed vs "
              f"{r['cache_bytes_per_token_float32']} B float32"]
    if r["relative_output_error"] is not None:
        lines.append(f"  HAD vs float: relative output error {r['relative_output_error']:.3f}")
    return lines + [""]


def format_table(results: list[dict], threads: int) -> str:
    lines = []
    for r in results:
        lines += _decode_lines(r, threads) if r["mode"] == "decode" else \
            _prefill_lines(r, threads)
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
        ax.plot(seqs, [r[key] if r[key] is not None and r[key] > 0 else np.nan
                       for r in results], style, label=label)
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
@click.option("--causal", is_flag=True,
              help="Causal attention: query i sees keys j <= i (HAD and dense).")
@click.option("--kv-heads", type=click.IntRange(min=1), default=None,
              help="Key/value heads, a divisor of --heads: grouped queries share each key "
                   "head [default: --heads].")
@click.option("--decode", is_flag=True,
              help="Decoding: one query row per head after a cache of --seq keys (per-token "
                   "ms, packed against float cache).")
@click.option("--no-dense", is_flag=True, help="Skip the dense float reference.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write time against sequence length (log-log) to this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --plot file.")
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
def bench(seq_text, heads, dim, top_n, batch, repeat, threads, recall_rows, seed, causal,
          kv_heads, decode, no_dense, as_json, plot, overwrite, quiet):
    """Time HAD attention (packed bits, top-N) against dense float attention.

    Generated inputs, no weights needed: q, k, v ~ N(0, 1) float32 (batch, heads, seq,
    dim). Prints median ms per stage, the speed-up, extra memory, key-cache bytes per token
    and the error of HAD against float attention on the same inputs. --decode times one
    token's attention over a cache of --seq keys instead. Dense float attention is skipped,
    with a line saying so, when it would not fit in the memory available
    (HADREF_BENCH_MEMORY bytes, if set).
    """
    import numba

    seqs = parse_int_list(seq_text, "--seq")
    kv_heads = check_heads(heads, kv_heads)
    if decode and causal:
        raise HadrefError("--causal: --decode is one query after all --seq keys (causal "
                          "already); give one of them")
    if decode and plot:
        raise HadrefError("--plot: draws the prefill stages against --seq; not with --decode")
    skipped = {}
    for seq in seqs:   # before allocating anything
        skipped[seq] = None if no_dense else \
            plan_memory(seq, heads, dim, batch, kv_heads, decode, recall_rows)
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

    if as_json:  # the table says it too
        for seq, reason in skipped.items():
            if reason is not None:
                click.echo(f"seq {seq}: {reason}", err=True)
    rates = None
    if not decode:
        progress("calibrating this core's XOR-popcount, counting and FMA rates")
        rates = calibrate(dim)
    results = []
    for seq in seqs:
        if decode:
            results.append(run_decode(seq, heads, dim, top_n, batch, repeat, seed, progress,
                                      kv_heads, not no_dense))
        else:
            results.append(run_bench(seq, heads, dim, top_n, batch, repeat, recall_rows, seed,
                                     progress, rates, causal, kv_heads, not no_dense))
        if not as_json:
            click.echo(format_table(results[-1:], used_threads))
    if as_json:
        click.echo(_json.dumps({"threads": used_threads, "results": results}, indent=2))
    if plot:
        _plot(results, plot)
        if not as_json:
            click.echo(f"plot written to {plot}")
    sys.stdout.flush()


__all__ = ["bench", "run_bench", "run_decode", "calibrate", "stage_floors_ms", "default_top_n",
           "format_table", "memory_needed", "plan_memory"]
