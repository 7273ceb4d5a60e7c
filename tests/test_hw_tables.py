"""Energy/area tables: every constant sourced; bad tables are clear one-line errors."""

import shutil
import sys

import pytest

from hadref.errors import HadrefError
from hadref.hw import Design, TechLibrary, evaluate
from hadref.hw.tables import TABLES_DIR, read_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _tables_copy(tmp_path):
    dst = tmp_path / "tables"
    shutil.copytree(TABLES_DIR, dst)
    return dst


def _rewrite(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_every_constant_has_a_source():
    for path in TABLES_DIR.glob("*.toml"):
        data = tomllib.loads(path.read_text())
        assert "meta" in data, path
        for name, entry in data.items():
            if name == "meta" or name == "preset" or name.startswith("table_"):
                continue
            assert isinstance(entry.get("source"), str) and entry["source"], (path, name)


def test_cam_search_energy_derivation_from_180nm():
    # 65nm.toml's cam_search is Pagiamtzis' 2.89 fJ at 0.18 um / 1.8 V scaled by C V^2
    t180 = read_table(TABLES_DIR / "180nm.toml")
    t65 = read_table(TABLES_DIR / "65nm.toml")
    published = t180["tcam_search_pagiamtzis"]["energy_fj_per_bit"]
    derived = published * (65 / 180) * (1.0 / 1.8) ** 2
    assert t65["cam_search"]["energy_fj_per_bit"] == pytest.approx(derived, rel=1e-3)


def test_packaged_tables_load_at_every_listed_node():
    for node in (130, 90, 65, 45, 40, 32, 16, 7):
        lib = TechLibrary(node)
        assert lib.energy("fp16_mult", "energy_pj") > 0


def test_missing_constant_names_file_and_key(tmp_path):
    tables = _tables_copy(tmp_path)
    _rewrite(tables / "45nm.toml", "energy_pj = 1.1\n", "")
    lib = TechLibrary(65, tables)
    with pytest.raises(HadrefError) as err:
        evaluate(Design(), lib)
    msg = str(err.value)
    assert "45nm.toml" in msg and "fp16_mult.energy_pj" in msg and "\n" not in msg


def test_missing_entry_names_key(tmp_path):
    tables = _tables_copy(tmp_path)
    _rewrite(tables / "40nm.toml", "[register]", "[register_renamed]")
    with pytest.raises(HadrefError, match="missing key 'register'"):
        evaluate(Design(), TechLibrary(65, tables))


def test_negative_constant_names_file_and_key(tmp_path):
    tables = _tables_copy(tmp_path)
    _rewrite(tables / "65nm.toml", "energy_pj = 4.0", "energy_pj = -4.0")
    with pytest.raises(HadrefError) as err:
        TechLibrary(65, tables)
    msg = str(err.value)
    assert "65nm.toml" in msg and "adc_6b.energy_pj" in msg and "-4.0" in msg


def test_zero_energy_is_rejected_when_used(tmp_path):
    tables = _tables_copy(tmp_path)
    _rewrite(tables / "45nm.toml", "energy_pj = 0.4", "energy_pj = 0")
    with pytest.raises(HadrefError, match=r"45nm.toml: key 'fp16_add.energy_pj' = 0.0"):
        evaluate(Design(), TechLibrary(65, tables))


def test_non_number_constant(tmp_path):
    tables = _tables_copy(tmp_path)
    _rewrite(tables / "40nm.toml", "energy_fj = 29.5", 'energy_fj = "29.5"')
    with pytest.raises(HadrefError, match="comparator_32b.energy_fj.*expected a number"):
        evaluate(Design(), TechLibrary(65, tables))


def test_invalid_toml_names_file(tmp_path):
    tables = _tables_copy(tmp_path)
    (tables / "45nm.toml").write_text("[fp16_add\nenergy_pj = 1\n")
    with pytest.raises(HadrefError, match="45nm.toml: not valid TOML"):
        TechLibrary(65, tables)


def test_missing_scaling_table(tmp_path):
    tables = _tables_copy(tmp_path)
    (tables / "scaling.toml").unlink()
    with pytest.raises(HadrefError, match="scaling.toml: energy/area table not found"):
        TechLibrary(65, tables)


def test_negative_cell_area(tmp_path):
    tables = _tables_copy(tmp_path)
    _rewrite(tables / "cells.toml", "area_f2 = 292", "area_f2 = -292")
    with pytest.raises(HadrefError, match="cells.toml: key 'cam_cell.area_f2'"):
        TechLibrary(65, tables)


def test_paper_preset_missing_key(tmp_path, monkeypatch):
    from hadref.hw import fit, presets

    tables = _tables_copy(tmp_path)
    _rewrite(tables / "paper.toml", "mac_lanes = 3529", "")
    monkeypatch.setattr(presets, "PAPER_TABLE_FILE", tables / "paper.toml")
    with pytest.raises(HadrefError, match="paper.toml: missing key 'preset.mac_lanes'"):
        presets._paper(tables / "paper.toml")
    _rewrite(tables / "paper.toml", "power_w = 0.127", "power_w = -0.127")
    monkeypatch.setattr(fit, "PAPER_TABLE_FILE", tables / "paper.toml")
    with pytest.raises(HadrefError, match="table_had_qk.power_w"):
        fit.paper_table()
