import ast
import inspect

import evens


def test_uses_a_comprehension():
    fn = ast.parse(inspect.getsource(evens.squares_of_evens)).body[0]
    assert not any(isinstance(node, (ast.For, ast.While)) for node in ast.walk(fn))
    assert any(isinstance(node, ast.ListComp) for node in ast.walk(fn))


def test_behaviour_unchanged():
    assert evens.squares_of_evens([1, 2, 3, 4, -6]) == [4, 16, 36]
    assert evens.squares_of_evens([]) == []
    assert evens.squares_of_evens([1, 3]) == []
    assert evens.total_of_squares([2, 3, 4]) == 20
    assert evens.odds([1, 2, 3]) == [1, 3]
