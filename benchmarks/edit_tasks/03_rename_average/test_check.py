import ast
from pathlib import Path

import stats


def test_renamed():
    assert stats.mean_of([1, 2, 3]) == 2
    assert not hasattr(stats, "calc_avg")
    source = Path(stats.__file__).read_text()
    names = {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}
    assert "calc_avg" not in names  # no call site left behind


def test_callers_still_work():
    assert stats.variance([1, 2, 3, 4]) == 1.25
    assert stats.summary([1, 2, 6]) == "mean=3.00 spread=5"
    assert stats.spread([4, 1, 9]) == 8
