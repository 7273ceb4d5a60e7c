"""`hadref hw` and `hadref hw sweep`: table, JSON schema, errors (exit 2, one line), plot."""

import builtins
import json

import pytest
from click.testing import CliRunner

from hadref.cli import main

COMPONENTS = {"qk", "topn", "softmax", "av", "storage", "total"}
PHASE_COMPONENTS = {"write", "qk", "topn", "softmax", "av", "storage", "leakage", "total"}
ENTRY_KEYS = {"area_m2", "power_w", "leakage_w", "energy_j_per_query", "cycles_per_query",
              "latency_s", "throughput_queries_per_s"}
PHASE_UNIT_KEYS = {"components", "leakage_w", "power_w", "latency_s", "throughput_tokens_per_s"}


def run(*args):
    return CliRunner().invoke(main, ["hw", *args])


def test_table_is_the_default_and_no_storage_is_the_papers_table():
    res = run("--no-storage")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("preset paper: n=256 keys, d=1024")
    qk = next(line for line in lines if line.startswith("qk"))
    assert qk.split()[1:3] == ["15.880", "12.730"] and qk.split()[4:6] == ["1.108", "0.127"]
    assert "78.9 % less area, 87.1 % less power" in res.output
    assert not any(line.startswith("storage") for line in lines)


def test_storage_is_on_by_default_in_hw_and_sweep():
    res = run()
    assert res.exit_code == 0, res.output
    storage = next(line for line in res.output.splitlines() if line.startswith("storage"))
    assert storage.split()[1] == "1.736"                 # SA K + V, n = 256, d = 1024
    total = next(line for line in res.output.splitlines() if line.startswith("total"))
    assert total.split()[1] == "33.532"
    assert "decode" in res.output and "prefill" in res.output and "leakage" in res.output
    hw_json = json.loads(run("--json").output)
    sweep_json = json.loads(run("sweep", "--seq", "256", "--json").output)
    assert hw_json["settings"]["storage"] is True and sweep_json[0]["settings"]["storage"] is True
    assert hw_json["sa"]["total"] == sweep_json[0]["sa"]["total"]


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def test_json_schema():
    res = run("--no-storage", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) == {"schema", "units", "sa", "had", "settings", "decode", "prefill",
                         "reductions"}
    assert data["schema"] == "hadref.hw/2"
    for unit in ("sa", "had"):
        assert set(data[unit]) == COMPONENTS
        for comp in COMPONENTS:
            entry = data[unit][comp]
            assert set(entry) == ENTRY_KEYS
            for key, v in entry.items():
                # every key's unit is named by a suffix listed in "units"
                assert any(key.endswith(suffix) for suffix in data["units"]), key
                assert _is_number(v) or (v is None and key == "throughput_queries_per_s"), \
                    (unit, comp, key, v)
            if entry["cycles_per_query"]:
                assert entry["latency_s"] == pytest.approx(
                    entry["cycles_per_query"] / data["settings"]["clock_hz"])
    assert data["sa"]["topn"]["throughput_queries_per_s"] is None    # SA has no top-N
    for phase in ("decode", "prefill"):
        ph = data[phase]
        assert set(ph) == {"context", "tokens", "token_rate_per_s", "sa", "had",
                           "energy_reduction"}
        for unit in ("sa", "had"):
            assert set(ph[unit]) == PHASE_UNIT_KEYS
            assert set(ph[unit]["components"]) == PHASE_COMPONENTS
            for c in ph[unit]["components"].values():
                assert set(c) == {"energy_j_per_token", "power_w", "cycles_per_token",
                                  "latency_s"}
                assert _is_number(c["energy_j_per_token"]) and _is_number(c["latency_s"])
                assert isinstance(c["cycles_per_token"], int)
                assert c["power_w"] == pytest.approx(c["energy_j_per_token"] *
                                                     ph["token_rate_per_s"])
                assert c["latency_s"] == pytest.approx(c["cycles_per_token"] /
                                                       data["settings"]["clock_hz"])
    assert data["decode"]["tokens"] == 1 and data["prefill"]["tokens"] == 256
    s = data["settings"]
    assert s["preset"] == "paper" and s["seq"] == 256 and s["top_n"] == 63
    assert s["node_nm"] == 65 and s["clock_ghz"] == pytest.approx(1.93836)
    assert s["clock_hz"] == pytest.approx(1.93836e9)
    assert (s["layers"], s["kv_heads"], s["leakage"]) == (1, 1, "hp")
    assert (s["mac_lanes"], s["had_av_lanes_busy"], s["had_av_lanes_built"]) == (3529, 869, 1241)
    assert data["had"]["total"]["power_w"] == pytest.approx(3.301, rel=0.02)
    assert data["had"]["qk"]["area_m2"] == pytest.approx(1.108e-6, rel=0.002)
    assert round(100 * data["reductions"]["area"]) == 79
    assert set(data["reductions"]) == {"area", "power", "energy", "decode_energy",
                                       "prefill_energy"}


def test_overrides_reach_the_model():
    data = json.loads(run("--preset", "first-principles", "--seq", "1024", "--top-n", "120",
                          "--dim", "64", "--heads", "4", "--node", "16", "--clock", "1.2",
                          "--storage", "--json").output)
    s = data["settings"]
    assert (s["preset"], s["seq"], s["top_n"], s["dim"], s["heads"], s["node_nm"]) == \
        ("first-principles", 1024, 120, 64, 4, 16)
    assert s["clock_ghz"] == pytest.approx(1.2) and s["storage"] is True
    assert data["sa"]["storage"]["area_m2"] > 0


def test_vs_paper():
    res = run("--vs-paper")
    assert res.exit_code == 0, res.output
    assert "first-principles" in res.output
    assert len([line for line in res.output.splitlines() if line.startswith(("sa ", "had "))]) == 20


def test_matched_power():
    data = json.loads(run("--power", "matched", "--json").output)
    rate = data["settings"]["query_rate_per_s"]
    qk = data["sa"]["qk"]
    assert qk["power_w"] == pytest.approx(qk["energy_j_per_query"] * rate)


@pytest.mark.parametrize("args,needle", [
    (["--seq", "0"], "--seq 0: expected a positive integer"),
    (["--seq", "32"], "--seq 32: the preset's N = 63 exceeds it"),
    (["--top-n", "300"], "--top-n 300: expected at most --seq"),
    (["--clock", "1e9"], "--clock 1000000000.0: expected a frequency in GHz"),
    (["--node", "3"], "--node = 3 nm"),
    (["--topn", "heap"], "--topn heap: needs digital scores"),
    (["--power", "matched", "--rate", "1e12"], "--rate 1e+12 queries/s: exceeds"),
    (["--exp", "lut", "--lanes", "-1"], "--lanes -1: expected a positive integer"),
    (["--rate", "1e6"], "--rate 1e+06: applies only with --power matched"),
    (["--token-rate", "1e12"], "--token-rate 1e+12 tokens/s: exceeds what"),
    (["--token-rate", "0"], "--token-rate 0.0: expected a positive number"),
    (["--kv-heads", "2"], "--kv-heads 2: expected a divisor of --heads (1)"),
    (["--layers", "0"], "--layers 0: expected a positive integer"),
])
def test_bad_options_exit_2_with_one_line(args, needle):
    res = run(*args)
    assert res.exit_code == 2, res.output
    err = res.output.strip()
    assert err.startswith("hadref: error: ") and needle in err and "\n" not in err
    assert "Traceback" not in res.output


def test_click_level_errors_exit_2():
    assert run("--preset", "nope").exit_code == 2
    assert run("sweep", "--seq", "256,abc").exit_code == 2
    assert run("sweep", "--seq", "0").exit_code == 2
    assert run("--leakage", "medium").exit_code == 2


def test_sweep_table():
    res = run("sweep", "--seq", "256,1024,4096")
    assert res.exit_code == 0, res.output
    assert "energy per query, nJ" in res.output and "area, mm2" in res.output
    rows = [line.split() for line in res.output.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows[:3]] == ["256", "1024", "4096"]
    assert [r[1] for r in rows[:3]] == ["63", "252", "1008"]  # N proportional


def test_sweep_json_fixed_top_n():
    data = json.loads(run("sweep", "--seq", "256,4096", "--top-n-mode", "fixed", "--json").output)
    assert [d["settings"]["top_n"] for d in data] == [63, 63]
    cam = [d["had"]["qk"]["energy_j_per_query"] for d in data]
    assert cam[1] == pytest.approx(16 * cam[0])            # CAM linear in n
    av = [d["had"]["av"]["energy_j_per_query"] for d in data]
    assert av[1] == pytest.approx(av[0])                    # A V follows N, not n
    assert data[1]["sa"]["storage"]["area_m2"] == pytest.approx(
        16 * data[0]["sa"]["storage"]["area_m2"])


def test_sweep_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep.png"
    res = run("sweep", "--seq", "256,1024", "--plot", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_plot_without_matplotlib(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    res = run("sweep", "--seq", "256", "--plot", str(tmp_path / "x.png"))
    assert res.exit_code == 2
    assert res.output.strip() == \
        "hadref: error: --plot needs matplotlib: pip install 'hadref[plot]'"


def test_sweep_says_where_the_area_advantage_ends():
    res = run("sweep", "--seq", "4096,16384,65536", "--top-n-mode", "fixed")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    area = [line for line in lines if line.startswith("  n=")][:3]
    assert "HAD smaller" in area[0] and "HAD smaller" in area[1]
    assert "HAD larger: its advantage has ended" in area[2]
    assert "per added key HAD +" in area[2] and "qk: the CAM" in area[2]
    assert "SA +" in area[2] and "storage: the K and V SRAM" in area[2]
    cross = next(line for line in lines if "area advantage ends between" in line)
    # HAD - SA is linear in n between the two lengths (same N, same lanes but A V's):
    # interpolate by hand from the JSON
    data = json.loads(run("sweep", "--seq", "16384,65536", "--top-n-mode", "fixed",
                          "--json").output)
    diff = [d["had"]["total"]["area_m2"] - d["sa"]["total"]["area_m2"] for d in data]
    n_star = 16384 + diff[0] / (diff[0] - diff[1]) * (65536 - 16384)
    assert f"at about n={n_star:.0f}" in cross
    assert any("decode energy per token advantage" in line for line in lines)


def test_sweep_per_key_growth_by_hand():
    # SA's area per added key is its K and V SRAM rows: 2 x 16 d bits x 0.20697 um2
    res = run("sweep", "--seq", "1024,2048", "--top-n-mode", "fixed")
    line = next(x for x in res.output.splitlines() if x.startswith("  n=1024: HAD") and "mm2" in x)
    assert f"SA +{2 * 16 * 1024 * 0.20697:.4g} um2" in line
