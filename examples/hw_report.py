"""Build a custom HAD accelerator design from Python and compare it with bf16 attention.

    python examples/hw_report.py

1. the paper preset (fitted to the paper's table) and its first-principles twin;
2. a custom design: a BERT-base-like layer (12 heads of d = 64) at 4096 tokens, 16 nm,
   1 GHz, N = 480 (the paper's ratio N/n ~ 0.117), three ways to score and select on the
   HAD side, all at one query rate (matched power);
3. a single component as a datasheet: a CAM array's area and search energy.
"""

from hadref.hw import Design, TechLibrary, components, evaluate, format_table, preset, to_dict, units
from hadref.hw.report import format_breakdown, format_comparison

# 1. the paper's table, reproduced, and what the published constants alone give
print(format_comparison({"paper": evaluate(preset("paper")),
                         "first-principles": evaluate(preset("first-principles"))}))
print()

# 2. a custom design point, from published constants only (no calibration)
base = Design(seq=4096, dim=64, heads=12, top_n=480, node_nm=16, clock_hz=1e9,
              mac_lanes=8192, storage=True, power_mode="matched",
              name="bert-base-4k")
variants = {
    "CAM + comparators, threshold top-N": base,
    "CAM + 7 b ADCs, counting top-N": base.replace(readout="adc", topn="counting"),
    "XNOR-popcount lanes, counting top-N": base.replace(qk_impl="xnor", topn="counting"),
}
# one query rate for every design: the slowest block among all variants
rate = min(evaluate(d).query_rate for d in variants.values())
for label, design in variants.items():
    result = evaluate(design.replace(query_rate=rate))
    had = to_dict(result)["had"]
    print(f"{label:<38} HAD qk {had['qk']['energy_j_per_query'] / units.NJ:8.3f} nJ/query, "
          f"{had['qk']['area_m2'] / units.MM2:7.3f} mm2 | HAD total {had['total']['power_w']:6.3f} W, "
          f"{100 * result.energy_reduction:.1f} % less energy than SA")
print()
result = evaluate(base.replace(query_rate=rate))
print(format_table(result))
print()
print(format_breakdown(result))
print()

# 3. one component as a datasheet (SI inside, readable units outside)
lib = TechLibrary(16)
cam = components.CAMArray(lib, rows=4096, bits=64)
print(f"CAM 4096 x 64 at 16 nm: {units.to_mm2(cam.area):.4f} mm2 (CACTI 292 F^2 cells), "
      f"{units.to_pj(cam.energy('search')):.2f} pJ per search "
      f"({units.to_fj(cam.search_energy_per_bit):.3f} fJ/bit)")
