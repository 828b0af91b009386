"""Word counts in plain text."""

import re

WORD = re.compile(r"[A-Za-z']+")


def words(text):
    """The words of the text, in order."""
    return WORD.findall(text)


def count_word(text, word):
    """How many times ``word`` occurs in ``text`` as a whole word."""
    return sum(1 for w in words(text) if w.lower() == word.lower())


def longest(text):
    """The longest word (the first of equals); None for no words."""
    return max(words(text), key=len, default=None)
