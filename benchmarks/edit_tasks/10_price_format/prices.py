"""Prices shown in the shop."""

VAT_RATE = 0.2


def with_vat(amount):
    """The amount with VAT added, rounded to cents."""
    return round(amount * (1 + VAT_RATE), 2)


def format_price(amount):
    """The amount as shown to customers."""
    return f"${amount:.2f}"


def price_list(items):
    """One line per (name, amount) pair: name, then the price with VAT."""
    return [f"{name}: {format_price(with_vat(amount))}" for name, amount in items]
