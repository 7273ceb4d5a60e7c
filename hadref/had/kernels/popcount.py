"""Population count and XOR-popcount levels of one query row against a block of keys."""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def ctpop64(typingctx, x):
    """Number of set bits of a uint64 (LLVM ``llvm.ctpop.i64``: POPCNT on x86-64)."""
    if x != types.uint64:
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def cttz64(typingctx, x):
    """Index of the lowest set bit of a nonzero uint64 (LLVM ``llvm.cttz.i64``: TZCNT/BSF)."""
    if x != types.uint64:
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.cttz", [ir.IntType(64), ir.IntType(1)])
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])

    return sig, codegen


@njit(cache=True, inline="always")
def row_levels(q_row, k_bits, valid, limit, invalid_level, levels):
    """Popcount levels of one query against keys ``0 .. limit-1``.

    q_row:  (W,) uint64, the packed query.
    k_bits: (>= limit, W) uint64, the packed keys.
    valid:  (>= limit,) bool, False = padding key.
    limit:  keys ``>= limit`` are not looked at (causal masking; ``n`` otherwise).
    invalid_level: the level written for padding keys (``d + 1``: never selected).
    levels: (>= limit,) int16, written: ``popcount(q XOR k_j)`` or ``invalid_level``.

    A branch-free loop: it vectorizes (LLVM expands ``ctpop`` into byte-table lookups on
    AVX2). When the first ``limit`` keys are all valid, ``row_levels_unmasked`` does the
    same without loading the mask (the mask load and blend cost about as much as the
    popcount).
    """
    words = q_row.shape[0]
    bad = np.int16(invalid_level)
    if words == 1:  # the common d <= 64 case: one word per key
        q0 = q_row[0]
        for j in range(limit):
            lev = np.int16(ctpop64(q0 ^ k_bits[j, 0]))
            levels[j] = lev if valid[j] else bad
    else:
        for j in range(limit):
            pc = np.uint64(0)
            for w in range(words):
                pc += ctpop64(q_row[w] ^ k_bits[j, w])
            levels[j] = np.int16(pc) if valid[j] else bad


@njit(cache=True, inline="always")
def row_levels_unmasked(q_row, k_bits, limit, levels):
    """``row_levels`` when keys ``0 .. limit-1`` are all valid."""
    words = q_row.shape[0]
    if words == 1:
        q0 = q_row[0]
        for j in range(limit):
            levels[j] = np.int16(ctpop64(q0 ^ k_bits[j, 0]))
    else:
        for j in range(limit):
            pc = np.uint64(0)
            for w in range(words):
                pc += ctpop64(q_row[w] ^ k_bits[j, w])
            levels[j] = np.int16(pc)
