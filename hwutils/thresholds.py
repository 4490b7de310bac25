"""The thresholds the report quotes, each in one place, with the text it is quoted as.

Training records them per epoch, the diagnostics read them off trained models, and figure labels
and prose format them from here, so that a changed threshold changes every number and sentence
that uses it.
"""
from __future__ import annotations

__all__ = ["NEAR_ZERO", "AT_CAP", "near_zero_text", "at_cap_text", "power_of_ten"]

#: A weight with ``|w|`` below this counts as (near) zero: how sparse a network is (late L1).
NEAR_ZERO = 1e-3
#: A hidden unit whose incoming weight norm is at least ``AT_CAP · c`` counts as at the max-norm cap.
AT_CAP = 0.99

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_ten(value: float) -> str:
    """``1e-3`` as "10⁻³"; a value that is not a power of ten as ``:g`` ("2e-05")."""
    import math

    exponent = math.log10(value) if value > 0 else math.nan
    if math.isfinite(exponent) and abs(exponent - round(exponent)) < 1e-9:
        return "10" + str(int(round(exponent))).translate(_SUPERSCRIPT)
    return f"{value:g}"


def near_zero_text() -> str:
    """How the near-zero threshold reads in prose and labels: "|w| < 10⁻³"."""
    return f"|w| < {power_of_ten(NEAR_ZERO)}"


def at_cap_text() -> str:
    """How the at-the-cap rule reads in prose and labels: "‖w‖ ≥ 0.99 c"."""
    return f"‖w‖ ≥ {AT_CAP:g} c"
