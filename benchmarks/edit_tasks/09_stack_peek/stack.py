"""A last-in, first-out stack."""


class Stack:
    def __init__(self):
        self._items = []

    def push(self, item):
        self._items.append(item)

    def pop(self):
        if not self._items:
            raise IndexError("pop from an empty stack")
        return self._items.pop()

    def __len__(self):
        return len(self._items)


def reversed_list(items):
    """The items in reverse order, through a Stack."""
    stack = Stack()
    for item in items:
        stack.push(item)
    return [stack.pop() for _ in range(len(stack))]
