"""Filters over lists of integers."""


def odds(values):
    """The odd values, in order."""
    return [v for v in values if v % 2]


def squares_of_evens(values):
    """The squares of the even values, in order."""
    return [v * v for v in values if v % 2 == 0]


def total_of_squares(values):
    """Sum of the squares of the even values."""
    return sum(squares_of_evens(values))
