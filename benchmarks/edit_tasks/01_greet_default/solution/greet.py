"""Greetings for the command line."""


def greet(name, greeting="Hello"):
    """Return a greeting for ``name``."""
    return f"{greeting}, {name}!"


def greet_all(names):
    """One greeting per name, in order."""
    return [greet(name) for name in names]


def shout(name):
    """The greeting in capital letters."""
    return greet(name).upper()
