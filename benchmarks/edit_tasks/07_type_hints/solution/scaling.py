"""Scaling of measurement series."""

UNITS = {"mm": 0.001, "cm": 0.01, "m": 1.0}


def scale(values: list[float], factor: float) -> list[float]:
    """Every value multiplied by factor."""
    return [v * factor for v in values]


def to_metres(values, unit):
    """Values in ``unit`` converted to metres."""
    return scale(values, UNITS[unit])
