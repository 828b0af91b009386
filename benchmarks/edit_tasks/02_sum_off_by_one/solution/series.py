"""Small arithmetic series helpers."""


def sum_to(n):
    """Sum of the integers 1..n, both ends included (0 when n < 1)."""
    total = 0
    for i in range(1, n + 1):
        total += i
    return total


def sum_of_squares(n):
    """Sum of the squares 1*1 + ... + n*n."""
    return sum(i * i for i in range(1, n + 1))


def triangle_rows(n):
    """The first n triangle numbers."""
    return [sum_to(k) for k in range(1, n + 1)]
