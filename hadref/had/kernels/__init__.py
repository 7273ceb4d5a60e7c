"""Numba kernels of HAD inference on packed sign bits (plain arrays in, plain arrays out).

One small concept per module, as in pynndescent/UMAP; no Python object crosses into jitted
code. The public, validated entry points are in :mod:`hadref.had.attention`; these kernels trust
their inputs (shapes, dtypes, contiguity are checked there).

=================  ===========================================================================
``pack``           ``pack_rows``: float (R, d) -> uint64 (R, ceil(d/64)), bit set iff x >= 0,
                   and the NaN/inf check of the same rows (one read of q and k)
``finite``         ``count_nonfinite_rows``: the input check for NaN/inf, parallel
``causal``         ``key_limit``: the keys a query row sees with ``causal``; ``row_top_n``,
                   ``ratio_top_n``: how many it keeps (one definition for every kernel)
``popcount``       ``ctpop64`` (LLVM ``ctpop``: one POPCNT instruction), ``row_levels``
``select``         counting top-N over the d+1 popcount levels; float partial select
                   (quickselect) for the training path
``softmax_av``     sparse softmax over the N survivors and the value accumulation
``simd``           32-lane vector primitives in LLVM IR for the tile kernel: levels,
                   counting, block selection, register-held weighted sums of value rows
``tile``           the tile kernel: 32 query rows share every pass over the keys
                   (key-major levels, lockstep threshold search, V in L1-sized blocks)
``rates``          calibration loops of ``hadref bench``: this core's XOR-popcount,
                   counting and FMA rates, from which each fused stage's floor follows
``fused``          the drivers: ``attend_tiles`` and ``attend_rows`` (the fused kernels,
                   nothing of size n*N materialized), ``topn_packed`` and
                   ``attend_from_topn`` (the two stages apart, for the benchmark and
                   ``hamming_topn``)
=================  ===========================================================================

Conventions (``../shared/HAD.md``): popcount *level* ``l = popcount(q XOR k)`` in 0..d, the
dot product of the +-1 sign vectors is ``d - 2 l``; a smaller level is a larger score. Ties
go to the lower key index; padding (and, with ``causal``, future) keys are never selected;
grouped-query attention: the drivers take ``kv_group`` (query heads per key head) and read
key group ``g // kv_group`` for query group g;
``N_eff = min(N, selectable keys)``, or with a ratio (N per row, the decoders' rule)
``min(selectable, max(1, round(ratio * selectable)))`` (``causal.row_top_n``: the drivers
take ``top_n, ratio``, ratio 0.0 for a fixed N); a row with no selectable key outputs zeros.
"""

import hashlib as _hashlib
from pathlib import Path as _Path


def _drop_stale_cache(directory: _Path) -> bool:
    """Delete Numba's cached machine code under ``directory/__pycache__`` when any kernel
    source in ``directory`` changed since it was written; returns True when it did.

    Numba keys a cached function on its own source file only. These kernels inline
    helpers from sibling modules (``simd`` into ``tile``, ``softmax_av`` into ``fused``),
    so an edit of a helper alone would leave the callers' cached code stale: hence one
    digest over all the sources. A directory that cannot be written (a read-only install)
    is left alone.
    """
    digest = _hashlib.sha256()
    for source in sorted(directory.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    cache = directory / "__pycache__"
    stamp = cache / "kernel-sources.sha256"
    try:
        if stamp.read_text() == digest.hexdigest():
            return False
    except OSError:
        pass
    try:
        cache.mkdir(exist_ok=True)
        for compiled in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            compiled.unlink(missing_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:
        return False
    return True


_drop_stale_cache(_Path(__file__).resolve().parent)
