"""Scratch arrays of the fused drivers (``hadref.had.kernels.fused``): one allocator each.

The drivers allocate nothing themselves: every worker chunk c of a driver owns slice
``[c]`` of each workspace, allocated here on the NumPy side (so that a memory probe such as
``tracemalloc`` sees them). Each allocator returns a named tuple whose fields are in the
order of the driver's trailing parameters, so a call passes them splatted::

    ws = tile_workspace(groups, m, n, d, dv, v.dtype)
    fused.attend_tiles(q_bits, k_bits, v, valid, valid_before, n, d, top_n, two_scale,
                       causal, stop, out, *ws)

C (the chunk count) is ``hadref.checks.worker_chunks`` of the driver's work items (tiles
of query rows, or query rows); the first dimension of every field is C.
W = ceil(d / 64) words per packed row; N' = min(top_n, n); dtype is v's float dtype.
The public functions (``had_attention``, ``hamming_topn``, ``PackedKeyCache``) and
``hadref bench`` allocate through these functions only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hadref.checks import worker_chunks
from hadref.had.kernels import tile as _tile


def _mark_words(n: int) -> int:
    return (n + 63) // 64


class TileWorkspace(NamedTuple):
    """Scratch of ``fused.attend_tiles`` (tiles of L = 32 query rows, ``tile.attend_tile``)."""

    levels: np.ndarray  # (C, n + 64, L) uint8 (d <= 254) or uint16: a tile's popcount levels
    q_lanes: np.ndarray  # (C, W, L) uint64: the tile's query words, one lane per row
    limit: np.ndarray  # (C, L) int32: keys each row sees (the causal limit)
    search: np.ndarray  # (C, 8, L) int64: threshold-search state per lane
    levels16: np.ndarray  # (C, 4, L) uint16: best level, probe, threshold, lent tie places
    picks: np.ndarray  # (C, L) uint64: keys each lane takes in the current block (bit mask)
    weight: np.ndarray  # (C, L, d + 2) dtype: softmax weight per level
    total: np.ndarray  # (C, L) float64: the weights' sum per row
    acc: np.ndarray  # (C, L, dv) dtype: the weighted value sum per row


def tile_workspace(groups: int, m: int, n: int, d: int, dv: int, dtype,
                   level_type=None) -> TileWorkspace:
    """Workspace of ``attend_tiles`` for G = groups of m query rows against n keys;
    level_type: np.uint8 (only for d <= 254: d + 1, a padding key's level, must fit) or
    np.uint16; None: uint8 where it fits (``attention._LEVELS8_MAX_D`` decides for
    ``had_attention``)."""
    if level_type is None:
        level_type = np.uint8 if d <= 254 else np.uint16
    if level_type is np.uint8 and d > 254:
        raise ValueError(f"tile_workspace: uint8 levels need d <= 254, got d = {d}")
    lanes = _tile.LANES
    c = worker_chunks(groups * ((m + lanes - 1) // lanes))
    words = (d + 63) // 64
    return TileWorkspace(
        levels=np.empty((c, n + _tile.BLOCK, lanes), level_type),
        q_lanes=np.empty((c, words, lanes), np.uint64),
        limit=np.empty((c, lanes), np.int32),
        search=np.empty((c, 8, lanes), np.int64),
        levels16=np.empty((c, 4, lanes), np.uint16),
        picks=np.empty((c, lanes), np.uint64),
        weight=np.empty((c, lanes, d + 2), dtype),
        total=np.empty((c, lanes), np.float64),
        acc=np.empty((c, lanes, dv), dtype),
    )


class RowWorkspace(NamedTuple):
    """Scratch of ``fused.attend_rows`` (one query row at a time, tiles of R rows share
    the passes over V)."""

    levels: np.ndarray  # (C, n) int16: one row's popcount levels
    marks: np.ndarray  # (C, 10, ceil(n / 64)) uint64: the selection's bit masks, key flags
    sel_idx: np.ndarray  # (C, R, N') int32: each row's survivors, in key order
    sel_lev: np.ndarray  # (C, R, N') int16: their levels
    sel_count: np.ndarray  # (C, R) int64: N_eff per row
    weight: np.ndarray  # (C, R, d + 2) dtype: softmax weight per level
    total: np.ndarray  # (C, R) float64: the weights' sum per row
    acc: np.ndarray  # (C, R, dv) dtype: the weighted value sum per row
    cursor: np.ndarray  # (C, R) int64: each row's next survivor while V is streamed


def row_workspace(groups: int, m: int, n: int, d: int, dv: int, top_n: int, dtype,
                  tile_rows: int = 32) -> RowWorkspace:
    """Workspace of ``attend_rows`` for G = groups of m query rows against n keys, in
    tiles of R = min(tile_rows, m) rows (``attention._ROW_KERNEL_GROUP``)."""
    rows = min(tile_rows, m)
    c = worker_chunks(groups * ((m + rows - 1) // rows))
    sel = min(top_n, n)
    return RowWorkspace(
        levels=np.empty((c, n), np.int16),
        marks=np.empty((c, 10, _mark_words(n)), np.uint64),
        sel_idx=np.empty((c, rows, sel), np.int32),
        sel_lev=np.empty((c, rows, sel), np.int16),
        sel_count=np.empty((c, rows), np.int64),
        weight=np.empty((c, rows, d + 2), dtype),
        total=np.empty((c, rows), np.float64),
        acc=np.empty((c, rows, dv), dtype),
        cursor=np.empty((c, rows), np.int64),
    )


class TopnWorkspace(NamedTuple):
    """Scratch of ``fused.topn_packed`` (the ordered top-N of every query row)."""

    levels: np.ndarray  # (C, n) int16: one row's popcount levels
    marks: np.ndarray  # (C, 10, ceil(n / 64)) uint64: the selection's bit masks, key flags
    sel_idx: np.ndarray  # (C, N') int32: the survivors, in key order
    sel_lev: np.ndarray  # (C, N') int16: their levels
    level_count: np.ndarray  # (C, d + 2) int32: survivors per level, for the ordering


def topn_workspace(rows: int, n: int, d: int, top_n: int) -> TopnWorkspace:
    """Workspace of ``topn_packed`` for ``rows`` query rows (all groups) against n keys."""
    c = worker_chunks(rows)
    sel = min(top_n, n)
    return TopnWorkspace(
        levels=np.empty((c, n), np.int16),
        marks=np.empty((c, 10, _mark_words(n)), np.uint64),
        sel_idx=np.empty((c, sel), np.int32),
        sel_lev=np.empty((c, sel), np.int16),
        level_count=np.empty((c, d + 2), np.int32),
    )


class SoftmaxAVWorkspace(NamedTuple):
    """Scratch of ``fused.attend_from_topn`` (sparse softmax and value sum)."""

    weight: np.ndarray  # (C, d + 2) dtype: softmax weight per level (d is read from it)
    acc: np.ndarray  # (C, dv) dtype: the weighted value sum of one row


def softmax_av_workspace(rows: int, d: int, dv: int, dtype) -> SoftmaxAVWorkspace:
    """Workspace of ``attend_from_topn`` for ``rows`` query rows (all groups)."""
    c = worker_chunks(rows)
    return SoftmaxAVWorkspace(weight=np.empty((c, d + 2), dtype), acc=np.empty((c, dv), dtype))


__all__ = ["TileWorkspace", "tile_workspace", "RowWorkspace", "row_workspace",
           "TopnWorkspace", "topn_workspace", "SoftmaxAVWorkspace", "softmax_av_workspace"]
