import series


def test_inclusive():
    assert series.sum_to(1) == 1
    assert series.sum_to(4) == 10
    assert series.sum_to(100) == 5050
    assert series.triangle_rows(4) == [1, 3, 6, 10]


def test_existing_behaviour():
    assert series.sum_to(0) == 0
    assert series.sum_to(-3) == 0
    assert series.sum_of_squares(3) == 14
