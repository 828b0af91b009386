import geometry


def test_repr():
    assert repr(geometry.Point(1, 2)) == "Point(x=1, y=2)"
    assert repr(geometry.Point(0.5, -3)) == "Point(x=0.5, y=-3)"
    assert str([geometry.Point(1, 1)]) == "[Point(x=1, y=1)]"


def test_existing_behaviour():
    a, b = geometry.Point(0, 0), geometry.Point(3, 4)
    assert a.distance_to(b) == 5
    assert geometry.midpoint(a, b) == geometry.Point(1.5, 2)
    assert a != b
