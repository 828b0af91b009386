import pytest

import people


@pytest.mark.parametrize("age", [-1, -30, 151, 1000])
def test_rejects_bad_age(age):
    with pytest.raises(ValueError):
        people.make_person("ann", age)


@pytest.mark.parametrize("age", [0, 42, 150])
def test_accepts_good_age(age):
    p = people.make_person("  ann lee ", age)
    assert (p.name, p.age) == ("Ann Lee", age)


def test_oldest():
    group = [people.make_person("a", 3), people.make_person("b", 70), people.make_person("c", 9)]
    assert people.oldest(group).name == "B"
