"""Grades of a class."""

PASS_MARK = 50


def average(scores):
    """Mean of the scores; 0.0 for an empty list."""
    return sum(scores) / len(scores)


def passed(scores):
    """The scores at or above the pass mark."""
    return [s for s in scores if s >= PASS_MARK]


def report(scores):
    return f"{len(passed(scores))} of {len(scores)} passed, average {average(scores):.1f}"
