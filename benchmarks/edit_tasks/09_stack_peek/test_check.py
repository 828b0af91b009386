import pytest

import stack


def test_peek():
    s = stack.Stack()
    s.push(1)
    s.push(2)
    assert s.peek() == 2
    assert len(s) == 2  # not removed
    assert s.pop() == 2
    assert s.peek() == 1


def test_peek_empty():
    with pytest.raises(IndexError):
        stack.Stack().peek()


def test_existing_behaviour():
    s = stack.Stack()
    with pytest.raises(IndexError):
        s.pop()
    assert stack.reversed_list([1, 2, 3]) == [3, 2, 1]
