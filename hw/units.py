"""SI units used inside hadref.hw, and the readable units its reports use.

Inside the model every quantity is SI: energy in joules (J), power in watts (W), area in
square metres (m^2), time in seconds (s), frequency in hertz (Hz). Multiply by a constant
below to go from the named unit to SI (``1.1 * PJ`` is 1.1 pJ in J); divide to go back
(``area / MM2`` is an area in mm^2).
"""

# energy (J)
NJ = 1e-9
PJ = 1e-12
FJ = 1e-15
# power (W)
NW = 1e-9
UW = 1e-6
MW = 1e-3
# area (m^2)
MM2 = 1e-6
UM2 = 1e-12
# length (m)
NM = 1e-9
# frequency (Hz)
MHZ = 1e6
GHZ = 1e9


def to_mm2(area_m2: float) -> float:
    """Area in m^2 -> mm^2."""
    return area_m2 / MM2


def to_um2(area_m2: float) -> float:
    """Area in m^2 -> um^2."""
    return area_m2 / UM2


def to_nj(energy_j: float) -> float:
    """Energy in J -> nJ."""
    return energy_j / NJ


def to_pj(energy_j: float) -> float:
    """Energy in J -> pJ."""
    return energy_j / PJ


def to_fj(energy_j: float) -> float:
    """Energy in J -> fJ."""
    return energy_j / FJ


def feature_area(node_nm: float) -> float:
    """F^2 in m^2 for a node of ``node_nm`` nanometres (F = the node's feature size)."""
    return (node_nm * NM) ** 2
