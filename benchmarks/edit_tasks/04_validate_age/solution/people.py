"""People and their ages."""

from dataclasses import dataclass


@dataclass
class Person:
    name: str
    age: int


def make_person(name, age):
    """A Person with a cleaned-up name."""
    if age < 0 or age > 150:
        raise ValueError(f"age out of range: {age}")
    return Person(name.strip().title(), age)


def oldest(people):
    """The oldest person of a non-empty list."""
    return max(people, key=lambda p: p.age)
