import words


def test_ignores_case():
    assert words.count_word("The cat saw the other cat. THE END", "the") == 3
    assert words.count_word("Cat cat CAT", "cAt") == 3


def test_existing_behaviour():
    assert words.count_word("the theme of the day", "the") == 2  # whole words only
    assert words.count_word("", "x") == 0
    assert words.words("It's a dog") == ["It's", "a", "dog"]  # words keep their case
    assert words.longest("a bb ccc dd") == "ccc"
