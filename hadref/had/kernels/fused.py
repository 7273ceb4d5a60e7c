"""The drivers: parallel over (batch*head, query row) with ``prange``.

Arrays are flattened to G = prod(leading dims) groups:
``q_bits (G, m, W)``, ``k_bits (G, >= n, W)`` uint64, ``v (G, >= n, dv)`` float,
``valid (G, >= n)`` bool with ``valid_before (G, >= n + 1)`` int32 its prefix counts
(``valid_before[g, j]`` = valid keys among the first j). Grouped-query attention: with
``kv_group`` (query heads per key head, default 1) the key side has G / kv_group groups
and query group g reads key group ``g // kv_group`` (q laid out (B*h_q, m, W), k
(B*h_kv, n, W)): keys, values and masks are stored once per key head. Only the first ``n`` keys (an
argument) are used, so a growing key cache passes its whole buffer without a copy. Query row ``i`` with
``causal`` sees keys ``j <= i + n - m`` (``causal.key_limit``; queries aligned to the end of the keys, as in
decoding; ``m == n`` is ordinary causal attention). Every driver takes ``top_n, ratio``: row i keeps
``causal.row_top_n(top_n, ratio, valid_before[g, limit_i])`` keys, i.e. ``min(top_n, selectable)`` with
ratio 0.0 (a fixed N) and ``min(top_n, max(1, round(ratio * selectable)))`` with a ratio (N per row;
top_n the cap, ``causal.ratio_top_n(ratio, n)`` from the callers).

Two fused kernels compute the same attention: ``attend_tiles`` (``tile.attend_tile``:
32 query rows share every pass over the keys; used from 16 query rows on) and
``attend_rows`` (one query row at a time: cheaper when there are only a few rows, as in
decoding). Rows (tiles of rows) are dealt to C worker chunks round-robin (which balances
the causal triangle); each chunk owns one slice of every workspace, all passed in by the
caller so that they are NumPy allocations a memory probe sees (``hadref.had.workspaces``:
one allocator per driver, fields in the order of its trailing parameters). Neither holds
anything of size n*N for all rows. ``fastmath`` is limited to contraction and reassociation of the
value sum (the selection is integer and exact; exp is untouched).
"""

from numba import njit, prange

from hadref.had.kernels.causal import key_limit, row_top_n
from hadref.had.kernels.popcount import row_levels, row_levels_unmasked
from hadref.had.kernels.select import counting_topn, order_by_level
from hadref.had.kernels.softmax_av import accumulate, finish, level_decay, level_weights, softmax_av_row
from hadref.had.kernels.tile import LANES, attend_tile

_VALUE_SUM_MATH = {"contract", "reassoc"}


@njit(cache=True, inline="always")
def _levels(q_row, k_bits, valid, valid_before, limit, d, levels):
    """Levels of one query row against keys ``0 .. limit-1`` (``row_levels``), skipping
    the padding mask when none of those keys is padding."""
    if valid_before[limit] == limit:
        row_levels_unmasked(q_row, k_bits, limit, levels)
    else:
        row_levels(q_row, k_bits, valid, limit, d + 1, levels)


@njit(cache=True)
def _tiles_chunk(c, chunks, q_bits, k_bits, v, valid, valid_before, n, d, top_n, ratio, decay,
                 causal, stop_after, out, lev, q_lanes, limit, st, u16, picks, weight, total, acc,
                 kv_group):
    """Tiles c, c + chunks, ... of 32 query rows (one worker's share). A plain function
    called from the ``prange`` loop, as ``_rows_chunk``."""
    groups, m, _ = q_bits.shape
    tiles = (m + LANES - 1) // LANES
    guess = d // 2  # rows of one head have similar thresholds: the last one is a good start
    for t in range(c, groups * tiles, chunks):
        g = t // tiles
        i0 = (t - g * tiles) * LANES
        rows = min(LANES, m - i0)
        gk = g // kv_group
        guess = attend_tile(q_bits[g], k_bits[gk], v[gk], valid[gk], valid_before[gk], i0, rows,
                            m, n, d, top_n, ratio, decay, causal, guess, stop_after,
                            out[g, i0:i0 + rows], lev,
                            q_lanes, limit, st, u16, picks, weight, total, acc)


@njit(cache=True, parallel=True)
def attend_tiles(q_bits, k_bits, v, valid, valid_before, n, d, top_n, ratio, two_scale, causal,
                 stop_after, out, lev_ws, q_ws, limit_ws, st_ws, u16_ws, picks_ws, weight_ws,
                 total_ws, acc_ws, kv_group=1):
    """HAD attention, fused, by tiles of 32 query rows (``tile.attend_tile``).

    Arrays as the module docstring; out: (G, m, dv) written when stop_after is
    ``tile.RUN_ALL`` (``STOP_LEVELS`` / ``STOP_SELECT`` stop earlier, see ``attend_tile``).
    Workspaces (C chunks):
    lev_ws (C, n + 64, 32) uint8 (d <= 254) or uint16; q_ws (C, W, 32) uint64;
    limit_ws (C, 32) int32; st_ws (C, 8, 32) int64; u16_ws (C, 4, 32) uint16;
    picks_ws (C, 32) uint64; weight_ws (C, 32, d + 2) and acc_ws (C, 32, dv) of v's dtype;
    total_ws (C, 32) float64.
    """
    chunks = lev_ws.shape[0]
    decay = level_decay(two_scale, d)
    for c in prange(chunks):
        _tiles_chunk(c, chunks, q_bits, k_bits, v, valid, valid_before, n, d, top_n, ratio, decay,
                     causal, stop_after, out, lev_ws[c], q_ws[c], limit_ws[c], st_ws[c],
                     u16_ws[c], picks_ws[c], weight_ws[c], total_ws[c], acc_ws[c], kv_group)


@njit(cache=True, fastmath=_VALUE_SUM_MATH)
def _rows_chunk(c, chunks, q_bits, k_bits, v, valid, valid_before, n, d, top_n, ratio, decay,
                  causal, out, block, levels, marks, sel_idx, sel_lev, sel_count, weight,
                  total, acc, cursor, kv_group):
    """Tiles c, c + chunks, ... of query rows (one worker's share).

    A tile is ``sel_idx.shape[0]`` consecutive query rows of one (batch, head). Each row
    is selected (its survivors in key order); then the values are streamed in blocks of
    ``block`` keys and every row of the tile takes its survivors in the block, so one
    block of V stays in cache for the whole tile instead of each row gathering from all
    of V (which leaves the cache beyond a few thousand keys).
    A plain (not parallel) function called from the ``prange`` loop: inside a parfor body
    the row loops lose their vectorization.
    """
    groups, m, _ = q_bits.shape
    tile = sel_idx.shape[0]
    tiles = (m + tile - 1) // tile
    dv = acc.shape[1]
    guess = d // 2  # rows of one head have similar thresholds: the last one is a good start
    for t in range(c, groups * tiles, chunks):
        g = t // tiles
        i0 = (t - g * tiles) * tile
        rows = min(tile, m - i0)
        gk = g // kv_group
        end = 0
        for r in range(rows):
            i = i0 + r
            limit = key_limit(i, m, n, causal)
            _levels(q_bits[g, i], k_bits[gk], valid[gk], valid_before[gk], limit, d, levels)
            seen = valid_before[gk, limit]
            n_eff, top, thr = counting_topn(levels, limit, seen, d, row_top_n(top_n, ratio, seen),
                                            guess, marks, sel_idx[r], sel_lev[r])
            sel_count[r] = n_eff
            level_weights(n_eff, top, thr, decay, weight[r])
            total[r] = 0.0
            for col in range(dv):
                acc[r, col] = 0.0
            cursor[r] = 0
            if n_eff > 0:
                guess = thr
                end = max(end, sel_idx[r, n_eff - 1] + 1)
        for b0 in range(0, end, block):
            b1 = b0 + block
            for r in range(rows):
                start = cursor[r]
                stop = start
                while stop < sel_count[r] and sel_idx[r, stop] < b1:
                    stop += 1
                total[r] += accumulate(sel_idx[r], sel_lev[r], start, stop, v[gk], weight[r],
                                       acc[r])
                cursor[r] = stop
        for r in range(rows):
            finish(acc[r], total[r], sel_count[r], out[g, i0 + r])


@njit(cache=True, parallel=True)
def attend_rows(q_bits, k_bits, v, valid, valid_before, n, d, top_n, ratio, two_scale, causal, out,
                  block, levels_ws, marks_ws, idx_ws, lev_ws, count_ws, weight_ws, total_ws,
                  acc_ws, cursor_ws, kv_group=1):
    """HAD attention, fused, one query row at a time: XOR-popcount, counting top-N,
    sparse softmax, value sum (per tile of R rows, V is streamed in blocks).

    out: (G, m, dv) written; block: keys per streamed block of V. Workspaces (C chunks,
    tiles of R rows): levels_ws (C, n) int16; marks_ws (C, 10, ceil(n/64)) uint64;
    idx_ws (C, R, N') int32 and lev_ws (C, R, N') int16 with N' = min(top_n, n);
    count_ws, cursor_ws (C, R) int64; weight_ws (C, R, d+2) and acc_ws (C, R, dv) of v's
    dtype; total_ws (C, R) float64.
    """
    chunks = levels_ws.shape[0]
    decay = level_decay(two_scale, d)
    for c in prange(chunks):
        _rows_chunk(c, chunks, q_bits, k_bits, v, valid, valid_before, n, d, top_n, ratio,
                      decay, causal, out, block, levels_ws[c], marks_ws[c], idx_ws[c],
                      lev_ws[c], count_ws[c], weight_ws[c], total_ws[c], acc_ws[c],
                      cursor_ws[c], kv_group)


@njit(cache=True)
def _topn_chunk(c, chunks, q_bits, k_bits, valid, valid_before, n, d, top_n, ratio, causal, out_idx,
                out_lev, out_count, levels, marks, sel_idx, sel_lev, count, kv_group):
    groups, m, _ = q_bits.shape
    guess = d // 2
    for r in range(c, groups * m, chunks):
        g = r // m
        i = r - g * m
        gk = g // kv_group
        limit = key_limit(i, m, n, causal)
        _levels(q_bits[g, i], k_bits[gk], valid[gk], valid_before[gk], limit, d, levels)
        seen = valid_before[gk, limit]
        n_eff, top, thr = counting_topn(levels, limit, seen, d, row_top_n(top_n, ratio, seen),
                                        guess, marks, sel_idx, sel_lev)
        guess = thr
        order_by_level(sel_idx, sel_lev, n_eff, top, thr, count, out_idx[g, i], out_lev[g, i])
        out_count[g, i] = n_eff


@njit(cache=True, parallel=True)
def topn_packed(q_bits, k_bits, valid, valid_before, n, d, top_n, ratio, causal, out_idx, out_lev,
                out_count, levels_ws, marks_ws, idx_ws, lev_ws, count_ws, kv_group=1):
    """Stage 1 alone: the top-N of every query row, ordered.

    out_idx (G, m, N) int32 and out_lev (G, m, N) int16 (N = top_n): written in positions
    ``0 .. N_eff-1`` (N_eff of the row, ``causal.row_top_n``) by level ascending (score
    descending), index ascending on ties;
    out_count (G, m) int32: N_eff. Positions >= N_eff are left as they were.
    Workspaces: levels_ws (C, n) int16, marks_ws (C, 10, ceil(n/64)) uint64,
    idx_ws (C, N') int32, lev_ws (C, N') int16,
    count_ws (C, d+2) int32.
    """
    chunks = levels_ws.shape[0]
    for c in prange(chunks):
        _topn_chunk(c, chunks, q_bits, k_bits, valid, valid_before, n, d, top_n, ratio, causal,
                    out_idx, out_lev, out_count, levels_ws[c], marks_ws[c], idx_ws[c], lev_ws[c],
                    count_ws[c], kv_group)


@njit(cache=True, fastmath=_VALUE_SUM_MATH)
def _av_chunk(c, chunks, sel_idx, sel_lev, sel_count, v, decay, out, weight, acc, kv_group):
    groups, m, _ = sel_idx.shape
    for r in range(c, groups * m, chunks):
        g = r // m
        i = r - g * m
        n_eff = sel_count[g, i]
        top = sel_lev[g, i, 0] if n_eff > 0 else 0
        last = sel_lev[g, i, n_eff - 1] if n_eff > 0 else 0
        softmax_av_row(sel_idx[g, i], sel_lev[g, i], n_eff, top, last, v[g // kv_group], decay,
                       weight, acc, out[g, i])


@njit(cache=True, parallel=True)
def attend_from_topn(sel_idx, sel_lev, sel_count, v, two_scale, out, weight_ws, acc_ws,
                     kv_group=1):
    """Stage 2 alone: sparse softmax and value sum from ``topn_packed``'s output.

    Workspaces: weight_ws (C, d+2) and acc_ws (C, dv) of v's dtype.
    """
    chunks = weight_ws.shape[0]
    decay = level_decay(two_scale, weight_ws.shape[1] - 2)  # weight_ws is (C, d + 2)
    for c in prange(chunks):
        _av_chunk(c, chunks, sel_idx, sel_lev, sel_count, v, decay, out, weight_ws[c],
                  acc_ws[c], kv_group)
