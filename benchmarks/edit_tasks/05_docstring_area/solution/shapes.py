"""Areas and perimeters of simple shapes."""

import math


def circle_area(radius):
    """Area of a circle of the given radius."""
    return math.pi * radius ** 2


def area(width, height):
    """Area of a width x height rectangle."""
    return width * height


def perimeter(width, height):
    """Perimeter of a width x height rectangle."""
    return 2 * (width + height)
