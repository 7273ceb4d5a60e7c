"""Energy/area reference tables (TOML, one per technology node) and node scaling.

Each table in ``hw/tables/`` holds published constants at one node, each entry with its
``source``; the key's suffix names the unit (``energy_pj``, ``area_um2_per_bit``,
``area_f2``, ...). :class:`TechLibrary` reads them and returns constants in SI units
scaled to a target node with the Stillmaker-Baas factors of ``scaling.toml``.

A missing entry or key, a value that is not a number, or a negative value raises
:class:`hadref.errors.HadrefError` naming the file and the key.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from hadref.errors import HadrefError

from . import units

TABLES_DIR = Path(__file__).resolve().parent / "tables"

# unit suffix of a key -> factor to SI
_UNIT_SUFFIXES = {
    "energy_pj": units.PJ,
    "energy_fj": units.FJ,
    "energy_pj_per_bit": units.PJ,
    "energy_fj_per_bit": units.FJ,
    "area_um2": units.UM2,
    "area_um2_per_bit": units.UM2,
    "power_nw_per_bit": units.NW,
}


def read_table(path: str | Path) -> dict:
    """Read one TOML table and check it: every numeric leaf must be a finite number >= 0.

    Returns the parsed dict. Raises HadrefError naming the file (and the key) when the file
    is missing, is not valid TOML, or holds a negative or non-finite number.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise HadrefError(f"{path}: energy/area table not found") from None
    except tomllib.TOMLDecodeError as err:
        raise HadrefError(f"{path}: not valid TOML ({err})") from None
    _check_numbers(data, path, "")
    return data


def _check_numbers(node, path: Path, prefix: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _check_numbers(value, path, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_numbers(value, path, f"{prefix}[{i}]")
    elif isinstance(node, bool):
        return
    elif isinstance(node, (int, float)):
        if not math.isfinite(node) or (node < 0 and not prefix.startswith("energy_poly")):
            raise HadrefError(f"{path}: key '{prefix}' = {node!r}: expected a finite number >= 0")


def lookup(table: dict, path: Path, entry: str, key: str) -> float:
    """``table[entry][key]`` as a float, or HadrefError naming the file and 'entry.key'."""
    section = table.get(entry)
    if not isinstance(section, dict) or key not in section:
        raise HadrefError(f"{path}: missing key '{entry}.{key}'")
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HadrefError(f"{path}: key '{entry}.{key}' = {value!r}: expected a number")
    return float(value)


class _Scaling:
    """Stillmaker-Baas area and energy factors between nodes (log-log interpolated)."""

    def __init__(self, path: Path):
        data = read_table(path)
        self.path = path
        self.vdd = lookup(data, path, "meta", "vdd_v")
        area = data.get("area_rel_45nm", {})
        poly = data.get("energy_poly", {})
        try:
            self._area = sorted((float(k), float(v)) for k, v in area.items() if k != "source")
            self._energy = sorted(
                (float(k), self._poly(v)) for k, v in poly.items() if k != "source")
        except (TypeError, ValueError):
            raise HadrefError(f"{path}: area_rel_45nm / energy_poly must map node (nm) to "
                              "a number / [a, b, c]") from None
        if len(self._area) < 2 or len(self._energy) < 2:
            raise HadrefError(f"{path}: missing key 'area_rel_45nm' or 'energy_poly' "
                              "(need at least two nodes)")
        for node, value in self._area + self._energy:
            if value <= 0:
                raise HadrefError(f"{path}: node {node:g} nm: scaling factor {value!r} must be > 0")
        self.nodes = (min(n for n, _ in self._area), max(n for n, _ in self._area))

    def _poly(self, coeffs) -> float:
        a, b, c = (float(x) for x in coeffs)
        return a * self.vdd ** 2 + b * self.vdd + c

    @staticmethod
    def _interp(points, node: float) -> float:
        xs = [math.log(n) for n, _ in points]
        ys = [math.log(v) for _, v in points]
        x = math.log(node)
        for i in range(len(xs) - 1):
            if xs[i] <= x <= xs[i + 1]:
                t = (x - xs[i]) / (xs[i + 1] - xs[i]) if xs[i + 1] > xs[i] else 0.0
                return math.exp(ys[i] + t * (ys[i + 1] - ys[i]))
        raise AssertionError("node outside the table")  # callers check the range

    def check(self, node: float, what: str) -> None:
        lo, hi = self.nodes
        if not (lo <= node <= hi):
            raise HadrefError(f"{what} = {node:g} nm: the scaling table {self.path.name} "
                              f"covers {lo:g}-{hi:g} nm")

    def area(self, src: float, dst: float) -> float:
        """Area factor from node ``src`` to node ``dst`` (nm)."""
        return self._interp(self._area, dst) / self._interp(self._area, src)

    def energy(self, src: float, dst: float) -> float:
        """Energy factor from node ``src`` to node ``dst`` (nm), at the table's Vdd."""
        return self._interp(self._energy, dst) / self._interp(self._energy, src)


class TechLibrary:
    """Published constants in SI units, scaled to ``node_nm``.

    >>> lib = TechLibrary(65)
    >>> lib.energy("fp16_mult", "energy_pj")   # 1.1 pJ at 45 nm x 1.24 -> J
    1.364...e-12

    ``tables_dir`` defaults to the package's ``hw/tables``; pass another folder to use
    your own tables (same layout: one ``<node>nm.toml`` per node, ``cells.toml``,
    ``scaling.toml``).
    """

    def __init__(self, node_nm: float, tables_dir: str | Path | None = None):
        self.tables_dir = Path(tables_dir) if tables_dir is not None else TABLES_DIR
        self.scaling = _Scaling(self.tables_dir / "scaling.toml")
        self.scaling.check(node_nm, "--node")
        self.node_nm = float(node_nm)
        self._tables = {}
        for path in sorted(self.tables_dir.glob("*nm.toml")):
            data = read_table(path)
            node = lookup(data, path, "meta", "node_nm")
            self._tables[path.stem] = (path, data, node)
        self.cells_path = self.tables_dir / "cells.toml"
        self.cells = read_table(self.cells_path)

    def _find(self, entry: str):
        for path, data, node in self._tables.values():
            if entry in data:
                return path, data, node
        names = ", ".join(p.name for p, _, _ in self._tables.values())
        raise HadrefError(f"{self.tables_dir}: missing key '{entry}' (looked in {names})")

    def raw(self, entry: str, key: str) -> tuple[float, float, Path]:
        """(value as written, its node in nm, its file) for ``entry.key``."""
        path, data, node = self._find(entry)
        return lookup(data, path, entry, key), node, path

    def energy(self, entry: str, key: str) -> float:
        """Energy constant ``entry.key`` in J, scaled to this library's node."""
        value, node, path = self.raw(entry, key)
        if key not in _UNIT_SUFFIXES or not key.startswith("energy"):
            raise HadrefError(f"{path}: key '{entry}.{key}' is not an energy")
        if value <= 0:
            raise HadrefError(f"{path}: key '{entry}.{key}' = {value!r}: expected an energy > 0")
        self.scaling.check(node, f"{path.name} node_nm")
        return value * _UNIT_SUFFIXES[key] * self.scaling.energy(node, self.node_nm)

    def area(self, entry: str, key: str) -> float:
        """Area constant ``entry.key`` in m^2, scaled to this library's node."""
        value, node, path = self.raw(entry, key)
        if key not in _UNIT_SUFFIXES or not key.startswith("area"):
            raise HadrefError(f"{path}: key '{entry}.{key}' is not an area")
        if value <= 0:
            raise HadrefError(f"{path}: key '{entry}.{key}' = {value!r}: expected an area > 0")
        self.scaling.check(node, f"{path.name} node_nm")
        return value * _UNIT_SUFFIXES[key] * self.scaling.area(node, self.node_nm)

    def leakage(self, entry: str, key: str = "power_nw_per_bit") -> float:
        """Leakage power constant ``entry.key`` in W (per bit), scaled to this library's node
        with the energy factor (hwcomponents' ``tech_node_leak`` is its ``tech_node_energy``)."""
        value, node, path = self.raw(entry, key)
        if key not in _UNIT_SUFFIXES or not key.startswith("power"):
            raise HadrefError(f"{path}: key '{entry}.{key}' is not a power")
        if value <= 0:
            raise HadrefError(f"{path}: key '{entry}.{key}' = {value!r}: expected a power > 0")
        self.scaling.check(node, f"{path.name} node_nm")
        return value * _UNIT_SUFFIXES[key] * self.scaling.energy(node, self.node_nm)

    def cell_area_f2(self, entry: str) -> float:
        """A layout cell's area in F^2 (node-independent), from cells.toml."""
        value = lookup(self.cells, self.cells_path, entry, "area_f2")
        if value <= 0:
            raise HadrefError(f"{self.cells_path}: key '{entry}.area_f2' = {value!r}: "
                              "expected an area > 0")
        return value


@lru_cache(maxsize=16)
def library(node_nm: float) -> TechLibrary:
    """The packaged tables at ``node_nm`` (cached)."""
    return TechLibrary(node_nm)
