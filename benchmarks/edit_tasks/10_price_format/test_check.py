import prices


def test_new_format():
    assert prices.format_price(3) == "3.00 EUR"
    assert prices.format_price(12.5) == "12.50 EUR"
    assert prices.price_list([("tea", 2.5)]) == ["tea: 3.00 EUR"]


def test_existing_behaviour():
    assert prices.VAT_RATE == 0.2
    assert prices.with_vat(10) == 12.0
