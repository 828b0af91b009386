"""Descriptive statistics for lists of numbers."""


def calc_avg(values):
    return sum(values) / len(values)


def spread(values):
    """Largest minus smallest value."""
    return max(values) - min(values)


def variance(values):
    mean = calc_avg(values)
    return calc_avg([(v - mean) ** 2 for v in values])


def summary(values):
    """A one-line report."""
    return f"mean={calc_avg(values):.2f} spread={spread(values)}"
