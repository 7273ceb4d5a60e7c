"""Decode and prefill: key/value writes, array leakage, layers and grouped key heads, cycles,
each against a hand computation; linear scaling in tokens and in bits."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadref.errors import HadrefError
from hadref.hw import Design, evaluate, preset
from hadref.hw import components as C
from hadref.hw.phases import COMPONENTS, decode, phases, prefill
from hadref.hw.tables import TechLibrary, library

# 65 nm: the write and leakage constants' own node, so the scaling factor is 1
E_WRITE = 0.20224e-12          # J per bit written (SRAM and, assumed, CAM): 65nm.toml
E_READ = 0.284375e-12          # J per SRAM bit read
P_HP = 182.18e-9               # W per SRAM bit, CACTI HP
P_LP = 0.005722e-9             # W per SRAM bit, Wang et al. 2008
CAM_LEAK_RATIO = 292 / 146     # CACTI CAM cell / SRAM cell

# n = 256 keys, d = 64, 4 query heads sharing 2 key heads (g = 2), 3 layers
GQA = Design(seq=256, dim=64, heads=4, kv_heads=2, layers=3, top_n=32, mac_lanes=512,
             clock_hz=1e9, node_nm=65, storage=True)
N_KV = 2 * 3      # key heads x layers: arrays / stores
N_Q = 4 * 3       # query heads x layers: head-queries per token


def test_constants_are_the_tables():
    lib = library(65)
    assert lib.energy("sram_buffer_write", "energy_pj_per_bit") == pytest.approx(E_WRITE)
    assert lib.energy("cam_row_write", "energy_pj_per_bit") == pytest.approx(E_WRITE)
    assert lib.leakage("sram_leakage_hp") == pytest.approx(P_HP)
    assert lib.leakage("sram_leakage_lp") == pytest.approx(P_LP, rel=1e-4)
    # the derivations written in 65nm.toml
    assert E_WRITE == pytest.approx(0.284375 * 0.0643685 / 0.0905117 * 1e-12, rel=1e-4)
    assert P_HP == pytest.approx(191.03e-3 / 1048576, rel=1e-4)
    assert P_LP == pytest.approx(12e-6 * 0.5 / 1048576, rel=1e-3)


def test_leakage_scales_with_the_energy_factor():
    lib45, lib65 = TechLibrary(45), TechLibrary(65)
    ratio = lib45.leakage("sram_leakage_hp") / lib65.leakage("sram_leakage_hp")
    assert ratio == pytest.approx(lib45.energy("fp16_add", "energy_pj") /
                                  lib65.energy("fp16_add", "energy_pj"))


# ------------------------------------------------------------------ writes by hand

def test_write_energy_by_hand():
    r = evaluate(GQA)
    d = 64
    # HAD: one CAM row (d sign bits) + one V row (16 d bits) per key head and layer
    assert r.write["had"].energy_per_query == pytest.approx(N_KV * d * 17 * E_WRITE)
    # SA: one K row and one V row of 16 d bits per key head and layer
    assert r.write["sa"].energy_per_query == pytest.approx(2 * N_KV * d * 16 * E_WRITE)
    # one row per array per cycle, the layers in sequence: L cycles
    assert r.write["had"].cycles == 3 and r.write["sa"].cycles == 3


def test_write_without_storage_is_the_cam_row_only():
    r = evaluate(GQA.replace(storage=False))
    assert r.write["had"].energy_per_query == pytest.approx(N_KV * 64 * E_WRITE)
    assert r.write["sa"].energy_per_query == 0


@pytest.mark.parametrize("change,factor", [
    ({"seq": 1024}, 1),                     # independent of the context length
    ({"dim": 128}, 2),                      # linear in bits per row
    ({"layers": 6}, 2),                     # linear in layers
    ({"kv_heads": 4}, 2),                   # linear in key heads
    ({"heads": 8, "kv_heads": 2}, 1),       # query heads share the key heads' rows
])
def test_write_scales_linearly_in_bits(change, factor):
    base = evaluate(GQA)
    new = evaluate(GQA.replace(**change))
    for unit in ("sa", "had"):
        assert new.write[unit].energy_per_query == pytest.approx(
            factor * base.write[unit].energy_per_query)


# ------------------------------------------------------------------ leakage by hand

def test_leakage_by_hand():
    n, d = 256, 64
    r = evaluate(GQA)
    kv_bits = n * d * N_KV * 16
    assert r.sa["storage"].leakage == pytest.approx(2 * kv_bits * P_HP)
    assert r.sa["qk"].leakage == 0 and r.sa["av"].leakage == 0   # logic: not modelled
    assert r.had["qk"].leakage == pytest.approx(n * d * N_KV * CAM_LEAK_RATIO * P_HP)
    assert r.had["storage"].leakage == pytest.approx(kv_bits * P_HP)
    assert r.had["total"].leakage == pytest.approx(
        n * d * N_KV * (CAM_LEAK_RATIO + 16) * P_HP)
    lp = evaluate(GQA.replace(leakage="lp"))
    assert lp.sa["total"].leakage == pytest.approx(2 * kv_bits * P_LP, rel=1e-4)


@pytest.mark.parametrize("change,factor", [({"seq": 512, "top_n": 32}, 2), ({"dim": 128}, 2),
                                           ({"layers": 6}, 2), ({"kv_heads": 4}, 2)])
def test_leakage_scales_linearly_in_bits(change, factor):
    base, new = evaluate(GQA), evaluate(GQA.replace(**change))
    for unit in ("sa", "had"):
        assert getattr(new, unit)["total"].leakage == pytest.approx(
            factor * getattr(base, unit)["total"].leakage)


def test_leakage_is_not_in_the_dynamic_power():
    r = evaluate(GQA)
    r_lp = evaluate(GQA.replace(leakage="lp"))
    for unit in ("sa", "had"):
        assert getattr(r, unit)["total"].power == getattr(r_lp, unit)["total"].power


# ------------------------------------------------------------------ GQA and layers

def test_grouped_query_cam_by_hand():
    e_bit = 0.5e-15
    r = evaluate(GQA.replace(cam_search_fj_per_bit=0.5, cam_cell_f2=1000.0))
    lib = library(65)
    n, d, b = 256, 64, C.score_bits(64)
    cmp_ = C.LatchComparator(lib)
    # every query head searches its group's array: 12 searches of 256 x 64 cells;
    # each of the 256 match lines has a comparator doing b threshold steps per search
    assert r.had["qk"].energy_per_query == pytest.approx(
        N_Q * n * d * e_bit + n * N_Q * b * cmp_.energy("compare"))
    # area: 6 arrays (one per key head and layer) + one comparator per row of each
    assert r.had["qk"].area == pytest.approx(
        N_KV * n * d * 1000 * (65e-9) ** 2 + n * N_KV * cmp_.area)
    # cycles: the 2 arrays of a layer search at once, each serving g = 2 heads, b steps,
    # the 3 layers in sequence: g x b x L
    assert r.had["qk"].cycles == 2 * b * 3
    # peak power: the 2 arrays of one layer searching every cycle
    assert r.had["qk"].power == pytest.approx(
        1e9 * (2 * n * d * e_bit + n * 2 * cmp_.energy("compare")))


def test_sa_storage_reads_once_per_key_head():
    r = evaluate(GQA)
    kv_bits = 256 * 64 * N_KV * 16
    assert r.sa["storage"].energy_per_query == pytest.approx(2 * kv_bits * E_READ)
    # V rows: each query head reads its own N rows
    assert r.had["storage"].energy_per_query == pytest.approx(32 * 64 * N_Q * 16 * E_READ)


def test_layers_multiply_every_count():
    one = evaluate(GQA.replace(layers=1))
    three = evaluate(GQA)
    for unit in ("sa", "had"):
        for b in ("qk", "topn", "softmax", "av", "storage"):
            assert getattr(three, unit)[b].energy_per_query == pytest.approx(
                3 * getattr(one, unit)[b].energy_per_query), (unit, b)


def test_sa_mac_energy_by_hand():
    r = evaluate(GQA)
    mac = C.MacUnit(library(65)).energy("mac")
    assert r.sa["qk"].energy_per_query == pytest.approx(256 * 64 * N_Q * mac)
    assert r.had["av"].energy_per_query == pytest.approx(32 * 64 * N_Q * mac)
    assert r.sa["qk"].cycles == math.ceil(256 * 64 * N_Q / 512)


# ------------------------------------------------------------------ phases by hand

def test_decode_by_hand():
    r = evaluate(GQA)
    dec = decode(r)
    for unit in ("sa", "had"):
        res, u = getattr(r, unit), getattr(dec, unit)
        blocks = ("qk", "topn", "softmax", "av", "storage")
        cycles = r.write[unit].cycles + sum(res[b].cycles for b in blocks)
        assert u.cycles["total"] == cycles
        assert u.max_rate == pytest.approx(1e9 / cycles)
        assert dec.latency(unit) == pytest.approx(cycles / 1e9)
        dynamic = r.write[unit].energy_per_query + res["total"].energy_per_query
        assert u.energy["leakage"] == pytest.approx(res["total"].leakage / dec.token_rate)
        assert u.energy["total"] == pytest.approx(dynamic + u.energy["leakage"])
        assert dec.power(unit) == pytest.approx(u.energy["total"] * dec.token_rate)
    # both units charged at the slower unit's batch-1 rate
    assert dec.token_rate == pytest.approx(min(dec.sa.max_rate, dec.had.max_rate))
    assert set(dec.sa.energy) == set(COMPONENTS)


def test_prefill_by_hand():
    r = evaluate(GQA)
    pre = prefill(r)
    sa, had = r.sa, r.had
    # the write into an array adds to the cycles of the block that owns the array
    ii_sa = max(sa["qk"].cycles, sa["softmax"].cycles, sa["av"].cycles,
                sa["storage"].cycles + r.write["sa"].cycles)
    ii_had = max(had["qk"].cycles + r.write["had"].cycles, had["topn"].cycles,
                 had["softmax"].cycles, had["av"].cycles,
                 had["storage"].cycles + r.write["had"].cycles)
    assert pre.sa.cycles["total"] == ii_sa and pre.had.cycles["total"] == ii_had
    assert pre.tokens == 256
    assert pre.latency("sa") == pytest.approx(256 * ii_sa / 1e9)
    assert pre.token_rate == pytest.approx(1e9 / max(ii_sa, ii_had))
    # dynamic energy per token as in decode; leakage at the prefill rate
    dec = decode(r)
    for unit in ("sa", "had"):
        p, d_ = getattr(pre, unit), getattr(dec, unit)
        for c in ("write", "qk", "av", "storage"):
            assert p.energy[c] == pytest.approx(d_.energy[c])
        assert p.energy["leakage"] == pytest.approx(p.leakage_w / pre.token_rate)


def test_leakage_energy_is_linear_in_tokens():
    # T tokens at a rate r leak T x P / r: per token P / r, so halving the rate doubles it
    fast = decode(evaluate(GQA.replace(token_rate=1e4)))
    slow = decode(evaluate(GQA.replace(token_rate=5e3)))
    for unit in ("sa", "had"):
        e_fast, e_slow = getattr(fast, unit).energy, getattr(slow, unit).energy
        assert e_slow["leakage"] == pytest.approx(2 * e_fast["leakage"])
        assert e_slow["write"] == e_fast["write"]          # dynamic: rate-independent
        leak_w = getattr(fast, unit).leakage_w
        for tokens in (1, 10, 1000):
            assert tokens * e_fast["leakage"] == pytest.approx(tokens * leak_w / 1e4)
    # a prefill of n tokens: n x the per-token energy, writes included
    pre = prefill(evaluate(GQA))
    assert pre.tokens * pre.had.energy["write"] == pytest.approx(
        256 * evaluate(GQA).write["had"].energy_per_query)


def test_token_rate_above_the_batch_1_rate_is_an_error():
    dec = decode(evaluate(GQA))
    with pytest.raises(HadrefError, match="--token-rate .* exceeds what SA decodes"):
        decode(evaluate(GQA.replace(token_rate=2 * dec.sa.max_rate)))


@pytest.mark.parametrize("kwargs,needle", [
    ({"kv_heads": 3}, "--kv-heads 3: expected a divisor of --heads (4)"),
    ({"kv_heads": 0}, "--kv-heads 0: expected a positive integer"),
    ({"layers": 0}, "--layers 0: expected a positive integer"),
    ({"token_rate": -1.0}, "--token-rate -1.0: expected a positive number"),
    ({"leakage": "medium"}, "--leakage 'medium': expected one of hp, lp"),
])
def test_bad_design_values(kwargs, needle):
    with pytest.raises(HadrefError) as err:
        evaluate(GQA.replace(**kwargs))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_paper_preset_single_layer_single_head_is_unchanged():
    # layers = 1 and kv_heads = heads reproduce the per-query model exactly
    p = preset("paper")
    assert (p.layers, p.n_kv_heads, p.group) == (1, 1, 1)
    r = evaluate(p)
    assert r.had["qk"].power == pytest.approx(0.127, rel=2e-3)
    assert r.sa["total"].cycles == 75 + 0 + 256 + 75 + 0
    ph = phases(evaluate(p.replace(storage=True)))
    assert ph["decode"].had.energy["write"] == pytest.approx(1024 * 17 * E_WRITE)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(8, 4096), d=st.sampled_from([16, 32, 64, 128]),
       kv=st.integers(1, 4), g=st.integers(1, 4), layers=st.integers(1, 8),
       leak=st.sampled_from(["hp", "lp"]))
def test_write_and_leakage_formulas_hold_for_any_shape(n, d, kv, g, layers, leak):
    design = Design(seq=n, dim=d, heads=kv * g, kv_heads=kv, layers=layers,
                    top_n=max(1, n // 8), mac_lanes=256, clock_hz=1e9, node_nm=65,
                    storage=True, leakage=leak)
    r = evaluate(design)
    p_bit = P_HP if leak == "hp" else P_LP
    stores = kv * layers
    assert r.write["had"].energy_per_query == pytest.approx(stores * d * 17 * E_WRITE)
    assert r.write["sa"].energy_per_query == pytest.approx(stores * d * 32 * E_WRITE)
    assert r.sa["total"].leakage == pytest.approx(n * d * stores * 32 * p_bit, rel=1e-4)
    assert r.had["total"].leakage == pytest.approx(
        n * d * stores * (16 + CAM_LEAK_RATIO) * p_bit, rel=1e-4)
    assert r.had["qk"].cycles == max(g * layers, g * layers * C.score_bits(d))
