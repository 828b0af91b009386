import grades


def test_empty():
    assert grades.average([]) == 0.0
    assert grades.report([]) == "0 of 0 passed, average 0.0"


def test_existing_behaviour():
    assert grades.average([40, 60, 80]) == 60
    assert grades.average([7]) == 7
    assert grades.report([40, 60, 80]) == "2 of 3 passed, average 60.0"
