import greet


def test_new_parameter():
    assert greet.greet("Ann", greeting="Hi") == "Hi, Ann!"
    assert greet.greet("Bob", "Good morning") == "Good morning, Bob!"


def test_default_unchanged():
    assert greet.greet("Ann") == "Hello, Ann!"
    assert greet.greet_all(["A", "B"]) == ["Hello, A!", "Hello, B!"]
    assert greet.shout("ann") == "HELLO, ANN!"
