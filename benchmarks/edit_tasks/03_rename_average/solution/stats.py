"""Descriptive statistics for lists of numbers."""


def mean_of(values):
    return sum(values) / len(values)


def spread(values):
    """Largest minus smallest value."""
    return max(values) - min(values)


def variance(values):
    mean = mean_of(values)
    return mean_of([(v - mean) ** 2 for v in values])


def summary(values):
    """A one-line report."""
    return f"mean={mean_of(values):.2f} spread={spread(values)}"
