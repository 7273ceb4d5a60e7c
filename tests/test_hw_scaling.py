"""Action counts checked by hand, scaling laws, positivity and monotonicity, units."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hadref.errors import HadrefError
from hadref.hw import Design, TechLibrary, evaluate, preset, units
from hadref.hw import components as C
from hadref.hw.model import build
from hadref.hw.tables import library

BASE = Design(seq=256, dim=64, heads=2, top_n=32, mac_lanes=512, clock_hz=1e9, node_nm=45)


def had(design, block):
    return evaluate(design).had[block]


# ------------------------------------------------------------------ counts by hand

def test_popcount_tree_full_adders():
    # levels of an adder tree over 256 bits: 128x1 + 64x2 + 32x3 + ... + 1x8 = 502
    assert C.popcount_fa_bits(256) == 502
    assert C.popcount_fa_bits(2) == 1
    assert C.popcount_fa_bits(1) == 0
    assert C.popcount_fa_bits(3) == 1 + 2  # (1+1) then 2-bit + carry-in bit


def test_score_bits():
    assert C.score_bits(1024) == 11  # 1025 levels
    assert C.score_bits(64) == 7
    assert C.score_bits(63) == 6


def test_mac_energy_is_horowitz_at_45nm():
    lib = library(45)
    mac = C.MacUnit(lib, "bf16")
    assert mac.energy("mac") == pytest.approx((1.1 + 0.4) * units.PJ)
    assert mac.area == pytest.approx((1640 + 1360) * units.UM2)
    assert C.MacUnit(lib, "fp32").energy("mac") == pytest.approx((1.1 + 0.9) * units.PJ)


def test_sa_qk_energy_is_n_d_h_macs():
    lib = library(45)
    e = evaluate(BASE).sa["qk"].energy_per_query
    assert e == pytest.approx(256 * 64 * 2 * C.MacUnit(lib).energy("mac"))


def test_cam_search_energy_by_hand():
    d = BASE.replace(cam_search_fj_per_bit=0.5)
    lib = library(45)
    cmp_ = C.LatchComparator(lib).energy("compare")
    b = C.score_bits(64)  # threshold steps
    expected = 2 * 256 * 64 * 0.5e-15 + 256 * 2 * b * cmp_
    assert had(d, "qk").energy_per_query == pytest.approx(expected)


def test_cam_area_by_hand():
    d = BASE.replace(cam_cell_f2=1000.0)
    lib = library(45)
    expected = 2 * 256 * 64 * 1000 * (45e-9) ** 2 + 256 * 2 * C.LatchComparator(lib).area
    assert had(d, "qk").area == pytest.approx(expected)


def test_peak_power_is_clock_times_busy_instances():
    r = evaluate(BASE)
    mac = C.MacUnit(library(45)).energy("mac")
    assert r.sa["qk"].power == pytest.approx(1e9 * 512 * mac)
    busy = -(-512 * 32 // 256)  # ceil(lanes N / n)
    assert r.had["av"].power == pytest.approx(1e9 * busy * mac)


def test_matched_power_is_energy_times_rate():
    r = evaluate(BASE.replace(power_mode="matched", query_rate=1e5))
    for unit in (r.sa, r.had):
        for blk in unit.values():
            assert blk.power == pytest.approx(blk.energy_per_query * 1e5)


def test_matched_rate_above_the_slowest_block_is_an_error():
    r = evaluate(BASE.replace(power_mode="matched"))
    with pytest.raises(HadrefError, match="--rate"):
        evaluate(BASE.replace(power_mode="matched", query_rate=2 * r.query_rate))


# --------------------------------------------------------------------- scaling laws

@pytest.mark.parametrize("readout", ["comparator", "adc"])
def test_cam_energy_linear_in_n(readout):
    topn = "threshold" if readout == "comparator" else "counting"
    e = [had(BASE.replace(seq=n, readout=readout, topn=topn), "qk").energy_per_query
         for n in (256, 512, 1024, 4096)]
    for n, ei in zip((512, 1024, 4096), e[1:]):
        assert ei == pytest.approx(e[0] * n / 256, rel=1e-12)


def test_cam_area_linear_in_n():
    a = [had(BASE.replace(seq=n), "qk").area for n in (256, 1024)]
    assert a[1] == pytest.approx(4 * a[0], rel=1e-12)


def test_av_energy_linear_in_top_n():
    e = {N: had(BASE.replace(top_n=N), "av").energy_per_query for N in (8, 16, 64, 128)}
    for N in (16, 64, 128):
        assert e[N] == pytest.approx(e[8] * N / 8, rel=1e-12)


def test_sa_energy_does_not_depend_on_top_n():
    assert evaluate(BASE.replace(top_n=8)).sa["total"].energy_per_query == \
        evaluate(BASE.replace(top_n=200)).sa["total"].energy_per_query


def _topn(design):
    return had(design, "topn").energy_per_query


def test_threshold_topn_follows_its_algorithm():
    # b steps, each one popcount over n flags + a count compare + a threshold write
    lib = library(45)
    d = BASE
    b, c = C.score_bits(64), C.score_bits(256)
    per_head = (b * (C.Popcount(lib, 256).energy("count")
                     + C.DigitalComparator(lib, c).energy("compare")
                     + C.Register(lib, b).energy("write"))
                + C.Register(lib, 256).energy("write"))
    assert _topn(d) == pytest.approx(2 * per_head)
    # independent of N
    assert _topn(d.replace(top_n=4)) == pytest.approx(_topn(d.replace(top_n=200)))


def test_counting_topn_linear_in_n_plus_d():
    lib = library(45)
    d = BASE.replace(readout="adc", topn="counting")
    n, dim = 256, 64
    b, c = C.score_bits(dim), C.score_bits(n)
    per_head = (n * C.Register(lib, c).energy("write")
                + (n + dim + 1) * C.IntAdder(lib, c).energy("add")
                + n * C.DigitalComparator(lib, b).energy("compare")
                + C.Register(lib, n).energy("write"))
    assert _topn(d) == pytest.approx(2 * per_head)
    assert _topn(d.replace(top_n=4)) == pytest.approx(_topn(d.replace(top_n=200)))


def test_heap_topn_grows_with_log_n():
    d = BASE.replace(readout="adc", topn="heap")
    # per score: ceil(log2 N)+1 writes and 2 ceil(log2 N)+1 compares; N=16 -> 4, N=256 -> 8
    e16, e256 = _topn(d.replace(top_n=16)), _topn(d.replace(top_n=256))
    lib = library(45)
    b, entry = C.score_bits(64), C.score_bits(64) + C.score_bits(256)
    w, k = C.Register(lib, entry).energy("write"), C.DigitalComparator(lib, b).energy("compare")
    assert e256 - e16 == pytest.approx(2 * 256 * ((8 - 4) * w + (16 - 8) * k))


def test_insertion_topn_linear_in_top_n():
    d = BASE.replace(readout="adc", topn="insertion")
    mask = 2 * C.Register(library(45), 256).energy("write")
    e = {N: _topn(d.replace(top_n=N)) - mask for N in (8, 32, 128)}
    assert e[32] == pytest.approx(4 * e[8]) and e[128] == pytest.approx(16 * e[8])


def test_comparator_readout_needs_threshold_topn():
    with pytest.raises(HadrefError, match="--topn counting"):
        evaluate(BASE.replace(topn="counting"))


def test_xnor_alternative_and_lut_exp():
    r = evaluate(BASE.replace(qk_impl="xnor", topn="counting", exp="lut", storage=True))
    qk = r.units["had"]["qk"].parts[0]
    assert qk.label == "xnor_popcount" and qk.count == 256 * 2
    assert r.had["qk"].energy_per_query > 0
    labels = [p.label for p in r.units["had"]["storage"].parts]
    assert labels == ["v_sram", "k_bits"]


def test_storage_counts():
    r = evaluate(BASE.replace(storage=True))
    sa_bits = r.units["sa"]["storage"].parts[0].count
    assert sa_bits == 256 * 64 * 2 * 16
    assert r.units["had"]["storage"].parts[0].count == 32 * 64 * 2 * 16  # N rows read
    assert r.units["had"]["storage"].area == pytest.approx(r.units["sa"]["storage"].area / 2)


# --------------------------------------------------------- positivity, monotonicity

sizes = st.fixed_dictionaries({
    "seq": st.sampled_from([64, 128, 256, 1024]),
    "dim": st.sampled_from([16, 64, 128, 1024]),
    "heads": st.integers(1, 4),
    "frac": st.floats(0.01, 1.0),
    "lanes": st.integers(16, 4096),
    "softmax_lanes": st.integers(1, 8),
    "topn": st.sampled_from(["threshold", "counting", "heap", "insertion"]),
    "storage": st.booleans(),
})


def _design(s):
    readout = "comparator" if s["topn"] == "threshold" else "adc"
    return Design(seq=s["seq"], dim=s["dim"], heads=s["heads"],
                  top_n=max(1, int(s["frac"] * s["seq"])), mac_lanes=s["lanes"],
                  softmax_lanes=s["softmax_lanes"],
                  topn=s["topn"], readout=readout, storage=s["storage"])


@given(sizes)
def test_positive_and_monotone_in_sizes(s):
    """Fixed hardware (MAC and softmax lanes given), a bigger workload: never cheaper.

    (Softmax lanes are given because, left to the rate-matching rule, they follow the SA
    MAC rate, which falls as n or d grow: see the fixed-N test below.)"""
    d = _design(s)
    r = evaluate(d)
    for unit in (r.sa, r.had):
        for name, blk in unit.items():
            assert blk.area >= 0 and blk.energy_per_query >= 0 and blk.power >= 0
        for name in ("qk", "softmax", "av", "total"):
            assert unit[name].area > 0 and unit[name].energy_per_query > 0
    assert r.had["topn"].energy_per_query > 0
    # n doubles with N (the paper's proportional schedule); see the test below for fixed N
    bigger = [d.replace(seq=2 * d.seq, top_n=2 * d.top_n), d.replace(dim=2 * d.dim),
              d.replace(heads=d.heads + 1)]
    if d.top_n < d.seq:
        bigger.append(d.replace(top_n=d.top_n + 1))
    for d2 in bigger:
        r2 = evaluate(d2)
        for unit, unit2 in ((r.sa, r2.sa), (r.had, r2.had)):
            assert unit2["total"].energy_per_query >= unit["total"].energy_per_query
            assert unit2["total"].area >= unit["total"].area * (1 - 1e-12)


def test_fixed_top_n_longer_context_needs_fewer_av_lanes():
    # every block is sized to the SA MAC rate r0 = lanes f / (n d h): with N fixed and n
    # doubled, SA takes twice as long per query, so the sparse A V needs half the lanes
    # (its energy per query is unchanged, its area halves); everything else grows
    a, b = evaluate(BASE), evaluate(BASE.replace(seq=512))
    assert b.units["had"]["av"].parts[0].instances == -(-512 * 32 // 512)
    assert b.had["av"].energy_per_query == pytest.approx(a.had["av"].energy_per_query)
    assert b.had["av"].area == pytest.approx(a.had["av"].area / 2)
    assert b.had["qk"].area == pytest.approx(2 * a.had["qk"].area)
    assert b.sa["qk"].energy_per_query == pytest.approx(2 * a.sa["qk"].energy_per_query)


def test_node_scaling_shrinks_energy_and_area():
    d = preset("first-principles")
    e = [evaluate(d.replace(node_nm=n)).had["total"] for n in (130, 65, 45, 16, 7)]
    for a, b in zip(e, e[1:]):
        assert b.energy_per_query < a.energy_per_query and b.area < a.area


def test_stillmaker_baas_factors():
    lib = TechLibrary(65)
    # hw-references.md: 45 -> 65 nm area x1.5, energy x1.24; -> 16 nm x0.19, x0.17
    assert lib.scaling.area(45, 65) == pytest.approx(1.5)
    assert lib.scaling.energy(45, 65) == pytest.approx(1.24, rel=1e-3)
    assert lib.scaling.area(45, 16) == pytest.approx(0.19)
    assert lib.scaling.energy(45, 16) == pytest.approx(0.17, rel=0.03)
    assert lib.scaling.energy(45, 7) == pytest.approx(0.094, rel=0.01)
    # interpolation between listed nodes stays between their factors
    assert lib.scaling.area(45, 40) < 1.0 < lib.scaling.area(45, 50)


def test_node_outside_table_is_an_error():
    with pytest.raises(HadrefError, match="--node = 3 nm"):
        TechLibrary(3)


def test_clock_scales_peak_power_only():
    a = evaluate(BASE)
    b = evaluate(BASE.replace(clock_hz=2e9))
    assert b.had["total"].power == pytest.approx(2 * a.had["total"].power)
    assert b.had["total"].energy_per_query == a.had["total"].energy_per_query
    assert b.had["total"].area == a.had["total"].area


# ------------------------------------------------------------------------------ units

def test_unit_conversions():
    assert units.to_mm2(1.5 * units.MM2) == pytest.approx(1.5)
    assert units.to_mm2(1e6 * units.UM2) == pytest.approx(1.0)
    assert units.to_um2(units.MM2) == pytest.approx(1e6)
    assert units.to_nj(1e3 * units.PJ) == pytest.approx(1.0)
    assert units.to_pj(units.NJ) == pytest.approx(1e3)
    assert units.to_fj(units.PJ) == pytest.approx(1e3)
    assert units.feature_area(65) == pytest.approx(4.225e-15)
    assert math.isclose(units.GHZ / units.MHZ, 1e3)


def test_invalid_design_values():
    for kwargs, opt in (({"seq": 0}, "--seq"), ({"top_n": 300}, "--top-n"),
                        ({"readout": "sar"}, "--readout"), ({"clock_hz": -1.0}, "--clock"),
                        ({"av_rows_provisioned": 8}, "av_rows_provisioned"),
                        ({"calibration": {"sa.qk": (0, 1)}}, "calibration")):
        with pytest.raises(HadrefError, match=opt):
            BASE.replace(**kwargs)


def test_component_latency_and_throughput():
    mac = C.MacUnit(library(45))
    assert mac.latency(2e9) == pytest.approx(0.5e-9)
    assert mac.throughput(2e9) == pytest.approx(2e9)
    assert "area=3000 um2" in repr(mac) and "mac=1.5 pJ" in repr(mac)


def test_component_unknown_action():
    with pytest.raises(HadrefError, match="no action 'read'"):
        C.MacUnit(library(45)).energy("read")
    assert build(BASE)["sa"]["qk"].parts[0].component.actions == ("mac",)
