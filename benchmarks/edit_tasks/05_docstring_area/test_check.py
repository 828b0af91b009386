import ast
from pathlib import Path

import shapes


def _functions():
    tree = ast.parse(Path(shapes.__file__).read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_area_has_docstring():
    doc = ast.get_docstring(_functions()["area"])
    assert doc and len(doc.split()) >= 2


def test_behaviour_unchanged():
    assert shapes.area(3, 4) == 12
    assert shapes.perimeter(3, 4) == 14
    assert abs(shapes.circle_area(1) - 3.14159) < 1e-4
    assert set(_functions()) == {"circle_area", "area", "perimeter"}
