"""Calibration loops for ``hadref bench``: this machine's XOR-popcount, lane-compare and FMA
rates on L1-resident data, from which the benchmark computes each fused stage's floor.

Each loop does the inner work of one stage of the tile kernel with nothing else around it
(no stores, no bookkeeping, operands in L1 or in registers):

``xor_popcount_words``  popcount(q XOR k) of 32 query words against one key word at a time,
                        summed in a 32-lane register (the levels stage's arithmetic);
``count_keys``          ``simd.count_at_most`` over an L1-resident block of levels (the
                        threshold search's counting pass);
``fma_lanes``           eight independent chains of vector FMAs in registers, 16 float32
                        lanes each on AVX-512 and 8 on AVX2 (the value sum's arithmetic at
                        the FMA units' throughput, not their latency).
"""

import llvmlite.binding as _llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from hadref.had.kernels import simd

_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_CHAINS = 8  # independent FMA chains: latency 4 x 2 FMA units


def fma_vector_lanes() -> int:
    """float32 lanes of one FMA register on this host: 16 with AVX-512 F, else 8."""
    return 16 if _llvm.get_host_cpu_features().get("avx512f") else 8


@intrinsic
def _xor_popcount_loop(typingctx, q_lanes, k_bits, reps):
    sig = types.uint64(q_lanes, k_bits, reps)

    def codegen(context, builder, signature, args):
        a_q, a_k, a_reps = args
        t_q, t_k, _ = signature.args
        v64 = ir.VectorType(_I64, simd.LANES)
        qv = builder.load(simd._data(context, builder, t_q, a_q, v64), align=8)
        karr = context.make_array(t_k)(context, builder, a_k)
        keys = builder.extract_value(karr.shape, 0)
        ctpop = simd._ctpop(builder, v64)

        def rep(_, carried):
            def key(j, acc):
                kj = simd._splat(builder, builder.load(builder.gep(karr.data, [j])), v64)
                return [builder.add(acc[0], builder.call(ctpop, [builder.xor(qv, kj)]))]

            return simd._counted_loop(builder, ir.Constant(_I64, 0), keys, carried, key, "pc")

        (acc,) = simd._counted_loop(builder, ir.Constant(_I64, 0), a_reps,
                                    [ir.Constant(v64, None)], rep, "pc.rep")
        total = ir.Constant(_I64, 0)
        for i in range(simd.LANES):
            total = builder.add(total, builder.extract_element(acc, ir.Constant(_I64, i)))
        return total

    return sig, codegen


@njit
def xor_popcount_words(q_lanes, k_bits, reps):
    """Sum of popcount(q_lanes[r] ^ k_bits[j]) over r < 32, j, ``reps`` times: 32 *
    len(k_bits) * reps word pairs. q_lanes (32,), k_bits (K,) uint64."""
    return _xor_popcount_loop(q_lanes, k_bits, reps)


@njit
def count_keys(lev, probe, count, reps):
    """``simd.count_at_most`` over all rows of lev, ``reps`` times: len(lev) * reps keys
    of 32 lanes. lev (<= 255, 32) uint8 or (<= 65535, 32) uint16; probe (32,) uint16;
    count (32,) int64."""
    for _ in range(reps):
        simd.count_at_most(lev, 0, lev.shape[0], probe, count)
    return count[0]


def _make_fma_loop(lanes):
    @intrinsic
    def fma_loop(typingctx, start, reps):
        sig = types.float32(start, reps)

        def codegen(context, builder, signature, args):
            a_start, a_reps = args
            vt = ir.VectorType(_F32, lanes)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt] * 3), f"llvm.fma.v{lanes}f32")
            base = simd._data(context, builder, signature.args[0], a_start, vt)
            init = [builder.load(builder.gep(base, [ir.Constant(_I64, i)]), align=4)
                    for i in range(_CHAINS)]
            mul = ir.Constant(vt, [0.999] * lanes)
            add = ir.Constant(vt, [0.001] * lanes)

            def body(_, accs):
                return [builder.call(fma, [a, mul, add]) for a in accs]

            accs = simd._counted_loop(builder, ir.Constant(_I64, 0), a_reps, init, body, "fma")
            total = accs[0]
            for a in accs[1:]:
                total = builder.fadd(total, a)
            return builder.extract_element(total, ir.Constant(_I64, 0))

        return sig, codegen

    @njit
    def fma_lanes(start, reps):
        """``reps`` rounds of 8 chains of one vector FMA each: 8 * lanes * reps float32
        FMAs; start (8 * lanes,) float32 holds the chains' first values."""
        return fma_loop(start, reps)

    return fma_lanes


_FMA_LOOPS = {}


def fma_loop_for(lanes: int):
    """The compiled FMA loop of ``lanes`` float32 lanes per register (8 or 16)."""
    if lanes not in _FMA_LOOPS:
        _FMA_LOOPS[lanes] = _make_fma_loop(lanes)
    return _FMA_LOOPS[lanes]


def chains() -> int:
    """Independent FMA chains of the FMA loop."""
    return _CHAINS
