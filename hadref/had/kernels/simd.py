"""32-lane vector primitives of the tile kernel, written as LLVM IR (Numba intrinsics).

The tile kernel (``tile``) holds the popcount levels of 32 query rows against every key
*key-major*: ``lev[j, r]`` is row r's level of key j, so one key's 32 levels are one
32-byte (8-bit levels) or 64-byte (16-bit levels) vector and every per-row quantity
(threshold, tie budget, count) is a vector lane. Plain Numba loops over those 32 lanes do
not vectorize (the small-integer arithmetic and the lane masks come out scalar), so
these few loops are spelled out in IR, where a 32-lane vector stays in
registers across a loop. Each primitive has a plain NumPy reference in ``tests/test_simd.py``.

Conventions: ``lev`` is (>= rows, 32) uint8 (d <= 254) or uint16 (levels < 32768),
C-contiguous; the element type of ``lev`` selects the lane width of every primitive.
16-bit levels are read as signed lanes where that lets AVX2 compare directly; 8-bit
levels (up to 255) are compared unsigned.

Vector width. The IR is the same for AVX2 and AVX-512 hosts: LLVM legalizes the 32-lane
vectors to the host's registers (on AVX-512 one ``vpopcntq`` per 8 rows' words, 512-bit
compares and FMAs; on AVX2 byte-table popcounts in 256-bit halves). Shapes written for
512-bit registers did not pay on AVX-512 (``benchmarks/README.md``: whole 32-lane masks
in the selection, two sets of running sums, V blocks of two masks), so lane masks stay in
16-lane halves: 32 lanes of ``i1`` are
legalized through bytes on AVX2, which more than doubles the selection's instructions.
``NUMBA_CPU_NAME=haswell`` compiles the AVX2 code on any x86-64 machine (the tests do).
"""

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 32  # query rows per tile: one lane each
BLOCK = 64  # keys per selection block: one uint64 of picks per row
_HALF = 16  # lanes per part of a lane mask

_I1, _I8, _I16, _I32, _I64 = (ir.IntType(b) for b in (1, 8, 16, 32, 64))
_F64 = ir.DoubleType()


def _lane_type(lev_type):
    """The IR integer type of one level: i8 for uint8 levels, i16 for uint16."""
    width = lev_type.dtype.bitwidth
    if width not in (8, 16) or lev_type.dtype.signed:
        raise TypeError(f"simd: levels must be uint8 or uint16, got {lev_type.dtype}")
    return ir.IntType(width)


def _vec(elem, count=LANES):
    return ir.VectorType(elem, count)


def _splat(builder, x, vt):
    """x broadcast to every lane of vector type vt."""
    undef = ir.Constant(vt, ir.Undefined)
    one = builder.insert_element(undef, x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(_vec(_I32, vt.count), [0] * vt.count))


def _data(context, builder, ty, value, as_type=None):
    """The data pointer of an array argument, optionally cast to ``as_type*``."""
    ptr = context.make_array(ty)(context, builder, value).data
    return builder.bitcast(ptr, as_type.as_pointer()) if as_type is not None else ptr


def _counted_loop(builder, start, stop, carried, body, name):
    """``for j in range(start, stop)`` with loop-carried SSA values (kept in registers).

    carried: initial values; body(j, values) -> next values. Returns the final values.
    """
    entry = builder.block
    loop = builder.append_basic_block(name + ".loop")
    done = builder.append_basic_block(name + ".done")
    builder.cbranch(builder.icmp_signed("<", start, stop), loop, done)
    builder.position_at_end(loop)
    j = builder.phi(_I64)
    phis = [builder.phi(c.type) for c in carried]
    j.add_incoming(start, entry)
    for p, c in zip(phis, carried):
        p.add_incoming(c, entry)
    nxt = body(j, phis)
    j_next = builder.add(j, ir.Constant(_I64, 1))
    tail = builder.block
    j.add_incoming(j_next, tail)
    for p, x in zip(phis, nxt):
        p.add_incoming(x, tail)
    builder.cbranch(builder.icmp_signed("<", j_next, stop), loop, done)
    builder.position_at_end(done)
    finals = []
    for c, x in zip(carried, nxt):
        f = builder.phi(c.type)
        f.add_incoming(c, entry)
        f.add_incoming(x, tail)
        finals.append(f)
    return finals


def _ctpop(builder, vt):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]),
                                          f"llvm.ctpop.v{vt.count}i64")


def _umin(builder, a, b):
    return builder.select(builder.icmp_unsigned("<", a, b), a, b)


@njit(cache=True, inline="always")
def lane_slot(r):
    """Where row r of a tile sits in ``q_lanes``: the level primitives read the 32 packed
    queries in this order so that the 64-bit popcounts of four groups of 8 rows interleave
    into 16-bit lanes in row order with shifts and ORs (no narrowing shuffles)."""
    return 8 * (r % 4) + r // 4


def _pack_levels(builder, counts, elem):
    """Four (8,) i64 popcount vectors (group b holds rows 4 i + b) -> the (32,) levels of
    rows 0..31 as ``elem`` (i8 or i16) lanes: ``P0 | P1 << 16 | P2 << 32 | P3 << 48``
    read as 16-bit lanes (every count is < 2^15 for one word; the caller sums words
    first), truncated to 8 bits for 8-bit levels."""
    v8 = _vec(_I64, 8)
    word = counts[0]
    for b in range(1, 4):
        word = builder.or_(word, builder.shl(counts[b], ir.Constant(v8, [16 * b] * 8)))
    lv = builder.bitcast(word, _vec(_I16))
    return lv if elem == _I16 else builder.trunc(lv, _vec(elem))


def _split_groups(builder, qv):
    """(32,) i64 in ``lane_slot`` order -> the four (8,) groups of ``_pack_levels``."""
    return [builder.shuffle_vector(qv, qv, ir.Constant(_vec(_I32, 8), list(range(8 * b, 8 * b + 8))))
            for b in range(4)]


def _levels_loop(builder, stop, levp, topp, level_of, elem, name):
    """For j < stop: store ``level_of(j)`` (a 32-lane vector of ``elem``) as row j of lev,
    keeping the lane-wise minimum in registers; store that minimum as 16-bit lanes (all
    ones of the level type when stop == 0)."""
    vt = _vec(elem)
    ones = (1 << elem.width) - 1

    def body(j, carried):
        lv = level_of(j)
        builder.store(lv, builder.gep(levp, [j]), align=1)
        return [_umin(builder, lv, carried[0])]

    (low,) = _counted_loop(builder, ir.Constant(_I64, 0), stop, [ir.Constant(vt, ones)],
                           body, name)
    builder.store(low if elem == _I16 else builder.zext(low, _vec(_I16)), topp, align=2)


@intrinsic
def tile_levels_dense(typingctx, q_lanes, k_bits, stop, lev, top):
    """Levels of one-word rows when every key before ``stop`` is selectable by every row.

    q_lanes: (1, 32) uint64, the packed query of row r at ``[0, lane_slot(r)]``;
    k_bits: (>= stop, 1) uint64. Writes ``lev[j, r] = popcount(q_r ^ k_bits[j, 0])`` for
    j < stop and ``top[r]`` = the smallest of them (all ones of lev's type when stop ==
    0). top: (32,) uint16.
    """
    sig = types.void(q_lanes, k_bits, stop, lev, top)
    elem = _lane_type(lev)

    def codegen(context, builder, signature, args):
        a_q, a_k, a_stop, a_lev, a_top = args
        t_q, t_k, _, t_lev, t_top = signature.args
        v64, v8 = _vec(_I64), _vec(_I64, 8)
        groups = _split_groups(builder, builder.load(_data(context, builder, t_q, a_q, v64),
                                                     align=8))
        kp = _data(context, builder, t_k, a_k)
        levp = _data(context, builder, t_lev, a_lev, _vec(elem))
        ctpop = _ctpop(builder, v8)

        def level_of(j):
            kj = _splat(builder, builder.load(builder.gep(kp, [j]), align=8), v8)
            counts = [builder.call(ctpop, [builder.xor(g, kj)]) for g in groups]
            return _pack_levels(builder, counts, elem)

        _levels_loop(builder, a_stop, levp, _data(context, builder, t_top, a_top, _vec(_I16)),
                     level_of, elem, "levels1")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def tile_levels(typingctx, q_lanes, k_bits, valid, limit, stop, invalid, lev, top):
    """Levels of W-word rows with a padding mask and per-lane key limits (causal).

    q_lanes: (W, 32) uint64 (word w of row r at ``[w, lane_slot(r)]``); k_bits:
    (>= stop, W) uint64; valid: (>= stop,) bool; limit: (32,) int32, lane r sees keys
    j < limit[r]. Writes ``lev[j, r]`` = popcount over the W words of ``q ^ k``, or
    ``invalid`` where key j is padding or at/after the lane's limit, for j < stop;
    ``top[r]`` = the smallest (all ones of lev's type when stop == 0). invalid: uint16
    scalar (d + 1), representable in lev's type.
    """
    sig = types.void(q_lanes, k_bits, valid, limit, stop, invalid, lev, top)
    elem = _lane_type(lev)

    def codegen(context, builder, signature, args):
        a_q, a_k, a_valid, a_lim, a_stop, a_bad, a_lev, a_top = args
        t_q, t_k, t_valid, t_lim, _, _, t_lev, t_top = signature.args
        v64, v32, v8 = _vec(_I64), _vec(_I32), _vec(_I64, 8)
        qarr = context.make_array(t_q)(context, builder, a_q)
        words = builder.extract_value(qarr.shape, 0)
        qp = builder.bitcast(qarr.data, v64.as_pointer())
        kp = _data(context, builder, t_k, a_k)
        vp = _data(context, builder, t_valid, a_valid)
        limv = builder.load(_data(context, builder, t_lim, a_lim, v32), align=4)
        levp = _data(context, builder, t_lev, a_lev, _vec(elem))
        bad = _splat(builder, builder.trunc(a_bad, elem) if elem != _I16 else a_bad, _vec(elem))
        ctpop = _ctpop(builder, v8)

        def level_of(j):
            row = builder.mul(j, words)

            def word(w, acc):
                kw = _splat(builder, builder.load(builder.gep(kp, [builder.add(row, w)]),
                                                  align=8), v8)
                groups = _split_groups(builder, builder.load(builder.gep(qp, [w]), align=8))
                return [builder.add(a, builder.call(ctpop, [builder.xor(g, kw)]))
                        for a, g in zip(acc, groups)]

            counts = _counted_loop(builder, ir.Constant(_I64, 0), words,
                                   [ir.Constant(v8, None)] * 4, word, "levels.word")
            ok = builder.icmp_unsigned("!=", builder.load(builder.gep(vp, [j])),
                                       ir.Constant(_I8, 0))
            seen = builder.icmp_signed("<", _splat(builder, builder.trunc(j, _I32), v32), limv)
            keep = builder.and_(seen, _splat(builder, ok, _vec(_I1)))
            return builder.select(keep, _pack_levels(builder, counts, elem), bad)

        _levels_loop(builder, a_stop, levp, _data(context, builder, t_top, a_top, _vec(_I16)),
                     level_of, elem, "levels")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def count_at_most(typingctx, lev, start, stop, probe, count):
    """``count[r] += #{start <= j < stop : lev[j, r] <= probe[r]}``, all 32 lanes at once.

    The lane counts are kept in lev's type inside the loop, so stop - start must be at
    most 255 (uint8 levels) or 65535 (uint16). probe: (32,) uint16 (below 256 for uint8
    levels); count: (32,) int64.
    """
    sig = types.void(lev, start, stop, probe, count)
    elem = _lane_type(lev)

    def codegen(context, builder, signature, args):
        a_lev, a_start, a_stop, a_probe, a_count = args
        t_lev, _, _, t_probe, t_count = signature.args
        vt, v64 = _vec(elem), _vec(_I64)
        levp = _data(context, builder, t_lev, a_lev, vt)
        pv = builder.load(_data(context, builder, t_probe, a_probe, _vec(_I16)), align=2)
        if elem != _I16:
            pv = builder.trunc(pv, vt)
        cp = _data(context, builder, t_count, a_count, v64)

        def body(j, carried):
            x = builder.load(builder.gep(levp, [j]), align=1)
            return [builder.sub(carried[0], builder.sext(builder.icmp_unsigned("<=", x, pv), vt))]

        (part,) = _counted_loop(builder, a_start, a_stop, [ir.Constant(vt, None)], body, "count")
        builder.store(builder.add(builder.load(cp, align=8), builder.zext(part, v64)), cp, align=8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def select_block(typingctx, lev, start, threshold, ties_left, picks):
    """Which of keys ``start .. start+63`` each lane takes, as one uint64 per lane.

    Lane r takes key j when ``lev[j, r] < threshold[r]``, or ``lev[j, r] == threshold[r]``
    while ``ties_left[r] > 0`` (which then counts down): in key order, so the threshold's
    places go to the lowest indices. Writes ``picks[r]`` (bit t = key start + t) and the
    updated ``ties_left``. All 64 rows of lev are read: rows past the real keys must hold
    a level above every threshold (the caller pads them). threshold: (32,) uint16 in lev's
    range; ties_left: (32,) uint16, at most 64 (127 for uint8 levels); picks: (32,)
    uint64. The lanes go in two halves of 16 (whole 32-lane masks were slower, even on
    AVX-512).
    """
    sig = types.void(lev, start, threshold, ties_left, picks)
    elem = _lane_type(lev)
    parts = LANES // _HALF

    def codegen(context, builder, signature, args):
        a_lev, a_start, a_thr, a_ties, a_picks = args
        t_lev, _, t_thr, t_ties, t_picks = signature.args
        width = LANES // parts  # lanes per part
        per_word = elem.width  # keys per lane word
        n_words = BLOCK // per_word
        part_t = _vec(elem, width)
        levp = _data(context, builder, t_lev, a_lev, part_t)
        thp = _data(context, builder, t_thr, a_thr, _vec(_I16, width))
        tiesp = _data(context, builder, t_ties, a_ties, _vec(_I16, width))
        pp = _data(context, builder, t_picks, a_picks, _vec(elem, width * n_words))
        zero = ir.Constant(part_t, None)
        signed = elem == _I16  # 16-bit levels < 32768: signed compares (AVX2 has those)
        lt = builder.icmp_signed if signed else builder.icmp_unsigned
        for h in range(parts):
            hh = ir.Constant(_I64, h)
            thr = builder.load(builder.gep(thp, [hh]), align=2)
            ties_ptr = builder.gep(tiesp, [hh])
            ties = builder.load(ties_ptr, align=2)
            if elem != _I16:
                thr, ties = builder.trunc(thr, part_t), builder.trunc(ties, part_t)
            # a key at the threshold is taken when fewer than ``ties`` such keys came
            # before it in the block: its rank, a running count, is the only chain from
            # key to key (one add; counting the places down made the chain three ops)
            rank = zero
            words = []  # n_words x per_word keys, key k of a word at bit k
            for g in range(n_words):
                word = zero
                for k in range(per_word):
                    j = builder.add(a_start, ir.Constant(_I64, per_word * g + k))
                    slot = builder.add(builder.mul(j, ir.Constant(_I64, parts)), hh)
                    x = builder.load(builder.gep(levp, [slot]), align=1)
                    eq = builder.icmp_signed("==", x, thr)
                    tie = builder.and_(eq, builder.icmp_unsigned("<", rank, ties))
                    rank = builder.sub(rank, builder.sext(eq, part_t))
                    take = builder.sext(builder.or_(lt("<", x, thr), tie), part_t)
                    bit = ir.Constant(part_t, [1 << k] * width)
                    word = builder.or_(word, builder.and_(take, bit))
                words.append(word)
            used = _umin(builder, rank, ties)
            ties = builder.sub(ties, used)
            builder.store(ties if elem == _I16 else builder.zext(ties, _vec(_I16, width)),
                          ties_ptr, align=2)
            allw = words[0]
            while len(words) > 1:  # concatenate: word g's lanes at g * width ...
                words = [builder.shuffle_vector(words[i], words[i + 1],
                                                ir.Constant(_vec(_I32, 2 * words[i].type.count),
                                                            list(range(2 * words[i].type.count))))
                         for i in range(0, len(words), 2)]
                allw = words[0]
            # (n_words x width lanes) -> width lanes x n_words: lane r's 64 bits, little-endian
            order = [g * width + r for r in range(width) for g in range(n_words)]
            out = builder.shuffle_vector(allw, ir.Constant(allw.type, ir.Undefined),
                                         ir.Constant(_vec(_I32, len(order)), order))
            builder.store(out, builder.gep(pp, [hh]), align=8)
        return context.get_dummy_value()

    return sig, codegen


def _make_weighted_rows_sum(chunk_bytes):
    @intrinsic
    def weighted_rows_sum(typingctx, acc, r, col, v, start, picks, lev, weight):
        """``acc[r, col:col+L] += sum_t weight[r, lev[j, r]] * v[j, col:col+L]`` over the
        set bits t of ``picks`` (j = start + t), with L = chunk_bytes / itemsize lanes (at
        least one) held in registers for the whole sum. Returns the sum of the weights
        (float64).

        acc: (R, >= col+L) and v: (n, dv) C-contiguous of one float dtype; weight: (R, d+2)
        of that dtype; lev as the module. The bits are walked lowest first (TZCNT).
        """
        sig = types.float64(acc, r, col, v, start, picks, lev, weight)

        def codegen(context, builder, signature, args):
            a_acc, a_r, a_col, a_v, a_start, a_picks, a_lev, a_wt = args
            t_acc, _, _, t_v, _, _, t_lev, t_wt = signature.args
            flt = context.get_data_type(t_acc.dtype)
            single = flt == ir.FloatType()
            lanes = max(1, chunk_bytes // (4 if single else 8))
            vt = ir.VectorType(flt, lanes) if lanes > 1 else flt
            suffix = (f"v{lanes}" if lanes > 1 else "") + ("f32" if single else "f64")
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3),
                                                 "llvm.fma." + suffix)
            cttz = builder.module.declare_intrinsic("llvm.cttz", [_I64, _I1])
            accarr = context.make_array(t_acc)(context, builder, a_acc)
            varr = context.make_array(t_v)(context, builder, a_v)
            wtarr = context.make_array(t_wt)(context, builder, a_wt)
            levp = _data(context, builder, t_lev, a_lev)
            dv = builder.extract_value(varr.shape, 1)
            acc_row = builder.add(builder.mul(a_r, builder.extract_value(accarr.shape, 1)), a_col)
            ap = builder.bitcast(builder.gep(accarr.data, [acc_row]), vt.as_pointer())
            vcol = builder.gep(varr.data, [a_col])
            wstride = builder.extract_value(wtarr.shape, 1)
            wrow = builder.gep(wtarr.data, [builder.mul(a_r, wstride)])
            entry = builder.block
            a0 = builder.load(ap, align=4)
            loop = builder.append_basic_block("wsum.loop")
            done = builder.append_basic_block("wsum.done")
            zero = ir.Constant(_I64, 0)
            builder.cbranch(builder.icmp_unsigned("!=", a_picks, zero), loop, done)
            builder.position_at_end(loop)
            bits = builder.phi(_I64)
            a = builder.phi(vt)
            total = builder.phi(_F64)
            bits.add_incoming(a_picks, entry)
            a.add_incoming(a0, entry)
            total.add_incoming(ir.Constant(_F64, 0.0), entry)
            j = builder.add(a_start, builder.call(cttz, [bits, ir.Constant(_I1, 1)]))
            lane = builder.add(builder.mul(j, ir.Constant(_I64, LANES)), a_r)
            level = builder.load(builder.gep(levp, [lane]))
            w = builder.load(builder.gep(wrow, [builder.zext(level, _I64)]))
            vrow = builder.bitcast(builder.gep(vcol, [builder.mul(j, dv)]), vt.as_pointer())
            x = builder.load(vrow, align=4)
            a_next = builder.call(fma, [_splat(builder, w, vt) if lanes > 1 else w, x, a])
            total_next = builder.fadd(total, builder.fpext(w, _F64) if single else w)
            bits_next = builder.and_(bits, builder.sub(bits, ir.Constant(_I64, 1)))
            bits.add_incoming(bits_next, loop)
            a.add_incoming(a_next, loop)
            total.add_incoming(total_next, loop)
            builder.cbranch(builder.icmp_unsigned("!=", bits_next, zero), loop, done)
            builder.position_at_end(done)
            a_fin = builder.phi(vt)
            a_fin.add_incoming(a0, entry)
            a_fin.add_incoming(a_next, loop)
            t_fin = builder.phi(_F64)
            t_fin.add_incoming(ir.Constant(_F64, 0.0), entry)
            t_fin.add_incoming(total_next, loop)
            builder.store(a_fin, ap, align=4)
            return t_fin

        return sig, codegen

    return weighted_rows_sum


# 256 bytes = 64 float32 / 32 float64 lanes in 8 AVX2 (4 AVX-512) registers; then 32
# bytes; then one
weighted_rows_sum_256 = _make_weighted_rows_sum(256)
weighted_rows_sum_32 = _make_weighted_rows_sum(32)
weighted_rows_sum_1 = _make_weighted_rows_sum(1)

