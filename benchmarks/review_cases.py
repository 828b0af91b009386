"""The cases of ``benchmarks/review.py``: 20 seeded bugs of 14 kinds and 4 changes that keep the behaviour,
each a one-place change of a copy of a standard-library module or of a small realistic module written here, with
a check (Python run after ``PRELUDE``) that passes on the clean file and fails on the buggy one
(``review.py --verify`` proves it)."""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])

ORDERS = '''\
"""Order totals for the shop's checkout."""

from __future__ import annotations

TAX_RATE = 0.2
FREE_SHIPPING_FROM = 50.0
SHIPPING = 4.99


def subtotal(order: dict) -> float:
    """The price of the order's items, before tax and shipping."""
    return sum(item["price"] * item["qty"] for item in order["items"])


def shipping(order: dict) -> float:
    """Shipping is free from FREE_SHIPPING_FROM on (the subtotal, before tax)."""
    if subtotal(order) >= FREE_SHIPPING_FROM:
        return 0.0
    return SHIPPING


def total(order: dict) -> float:
    """Subtotal with tax, plus shipping, rounded to cents."""
    amount = subtotal(order) * (1 + TAX_RATE) + shipping(order)
    return round(amount, 2)


def add_item(name: str, price: float, qty: int = 1, items: list | None = None) -> list:
    """Append an item to ``items`` (a new list when none is given) and return the list."""
    if items is None:
        items = []
    items.append({"name": name, "price": price, "qty": qty})
    return items
'''

CONFIG = '''\
"""Reading the service's settings from a dict (parsed from TOML or the environment)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing or has a value the service cannot use."""


DEFAULT_TIMEOUT_S = 30.0


def port(settings: dict) -> int:
    """The TCP port to listen on: 1 to 65535."""
    try:
        value = int(settings["port"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"port must be a number, not {settings.get('port')!r}") from e
    if not 1 <= value <= 65535:
        raise ConfigError(f"port {value} is outside 1-65535")
    return value


def timeout_s(settings: dict) -> float:
    """The request timeout in seconds (DEFAULT_TIMEOUT_S when not set); must be positive."""
    value = float(settings.get("timeout_s", DEFAULT_TIMEOUT_S))
    if value <= 0:
        raise ConfigError(f"timeout_s must be positive, not {value}")
    return value


def retries(settings: dict) -> int:
    """How often a failed request is retried: 0 to 10, 3 when not set."""
    value = int(settings.get("retries", 3))
    if value < 0 or value > 10:
        raise ConfigError(f"retries must be 0 to 10, not {value}")
    return value
'''

PAGING = '''\
"""Splitting a list of results into pages for the API."""

from __future__ import annotations

import math


def page_count(total: int, size: int) -> int:
    """How many pages ``total`` items fill, ``size`` per page (0 items: 0 pages)."""
    if size < 1:
        raise ValueError(f"page size must be at least 1, not {size}")
    return math.ceil(total / size)


def page(items: list, number: int, size: int) -> list:
    """The items of page ``number`` (pages are counted from 1)."""
    if number < 1:
        raise ValueError(f"pages are counted from 1, not {number}")
    start = (number - 1) * size
    return items[start:start + size]


def chunks(items: list, size: int) -> list[list]:
    """``items`` in lists of ``size`` (the last one may be shorter)."""
    return [items[i:i + size] for i in range(0, len(items), size)]
'''

# run before each check: ``m`` is the module under test, ``expect`` says what a failing test would say
PRELUDE = '''\
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("module_under_test", sys.argv[1])
m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(m)


def expect(expr, want):
    got = eval(expr, {"m": m})
    name = expr.replace("m.", "", 1)
    assert got == want, f"{name} returned {got!r}, not {want!r}"


def raises(expr, error):
    try:
        got = eval(expr, {"m": m})
    except error:
        return
    raise AssertionError(f"{expr.replace('m.', '', 1)} returned {got!r} instead of raising {error.__name__}")

'''


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str  # the kind of bug; "benign" for a change that keeps the behaviour
    file: str  # its name in the repository
    source: str  # "stdlib:textwrap.py" or the text itself
    old: str
    new: str
    check: str  # Python run after PRELUDE

    @property
    def bug(self) -> bool:
        return self.kind != "benign"

    def clean(self) -> str:
        if self.source.startswith("stdlib:"):
            return (STDLIB / self.source.removeprefix("stdlib:")).read_text()
        return self.source

    def changed(self) -> str:
        return self.clean().replace(self.old, self.new, 1)


def _c(name, kind, file, source, old, new, check) -> Case:
    return Case(name, kind, file, source, old, new, check)


CASES: list[Case] = [
    _c("shorten_split_arg", "wrong argument", "textwrap.py", "stdlib:textwrap.py",
       "text.strip().split()))", "text.strip().split(',')))",
       "expect(\"m.shorten('Hello  world!', width=12)\", 'Hello world!')\n"
       "expect(\"m.shorten('Hello  world!', width=11)\", 'Hello [...]')"),
    _c("wrap_missing_return", "missing return", "textwrap.py", "stdlib:textwrap.py",
       "    return w.wrap(text)\n", "    w.wrap(text)\n",
       "expect(\"m.wrap('a b c', width=3)\", ['a b', 'c'])"),
    _c("wrap_width_boundary", "boundary change", "textwrap.py", "stdlib:textwrap.py",
       "        if self.width <= 0:", "        if self.width < 0:",
       "raises(\"m.TextWrapper(width=0).wrap('abc')\", ValueError)\nexpect(\"m.wrap('ab', width=1)\", ['a', 'b'])"),
    _c("wrap_fit_comparison", "wrong comparison", "textwrap.py", "stdlib:textwrap.py",
       "                if cur_len + l <= width:", "                if cur_len + l < width:",
       "expect(\"m.wrap('aaa bbb', width=7)\", ['aaa bbb'])\nexpect(\"m.wrap('aaa bbb', width=5)\", ['aaa', 'bbb'])"),
    _c("dedent_margin_off_by_one", "off-by-one", "textwrap.py", "stdlib:textwrap.py",
       "                    margin = margin[:i]\n", "                    margin = margin[:i + 1]\n",
       "expect(\"m.dedent('  x\\\\n \\\\ty\\\\n')\", ' x\\n\\ty\\n')\nexpect(\"m.dedent('  a\\\\n  b')\", 'a\\nb')"),
    _c("indent_predicate_inverted", "inverted condition", "textwrap.py", "stdlib:textwrap.py",
       "            return line.strip()\n", "            return not line.strip()\n",
       "expect(\"m.indent('a\\\\n\\\\nb\\\\n', '> ')\", '> a\\n\\n> b\\n')"),
    _c("shlex_quote_inverted", "inverted condition", "shlex.py", "stdlib:shlex.py",
       "    if _find_unsafe(s) is None:", "    if _find_unsafe(s) is not None:",
       "expect(\"m.quote('abc')\", 'abc')\nexpect(\"m.quote('a b')\", \"'a b'\")"),
    _c("isleap_operator", "wrong operator", "calendar.py", "stdlib:calendar.py",
       "(year % 100 != 0 or year % 400 == 0)", "(year % 100 != 0 and year % 400 == 0)",
       "expect('m.isleap(2024)', True)\nexpect('m.isleap(2000)', True)\nexpect('m.isleap(1900)', False)"),
    _c("hls_swapped_args", "swapped arguments", "colorsys.py", "stdlib:colorsys.py",
       "    return (_v(m1, m2, h+ONE_THIRD), _v(m1, m2, h),", "    return (_v(m2, m1, h+ONE_THIRD), _v(m1, m2, h),",
       "expect('m.hls_to_rgb(0.0, 0.5, 1.0)', (1.0, 0.0, 0.0))\n"
       "expect('m.hls_to_rgb(0.5, 0.5, 0.0)', (0.5, 0.5, 0.5))"),
    _c("hsv_wrong_variable", "wrong variable", "colorsys.py", "stdlib:colorsys.py",
       "    s = rangec / maxc\n    rc = (maxc-r) / rangec\n", "    s = rangec / maxc\n    rc = (maxc-g) / rangec\n",
       "expect('[round(x, 4) for x in m.rgb_to_hsv(0.2, 0.4, 0.8)]', [0.6111, 0.75, 0.8])\n"
       "expect('[round(x, 4) for x in m.rgb_to_hsv(0.8, 0.4, 0.2)]', [0.0556, 0.75, 0.8])"),
    _c("escape_wrong_value", "wrong value", "html_utils.py", "stdlib:html/__init__.py",
       "    s = s.replace(\">\", \"&gt;\")", "    s = s.replace(\">\", \"&lt;\")",
       "expect(\"m.escape('a > b')\", 'a &gt; b')\nexpect(\"m.escape('<x>')\", '&lt;x&gt;')"),
    _c("capwords_wrong_function", "wrong function", "string_utils.py", "stdlib:string.py",
       "join(map(str.capitalize, s.split(sep)))", "join(map(str.title, s.split(sep)))",
       "expect(\"m.capwords('hello big-world')\", 'Hello Big-world')"),
    _c("subtotal_wrong_key", "wrong dict key", "orders.py", ORDERS,
       'item["price"] * item["qty"]', 'item["price"] * item["price"]',
       "expect(\"m.subtotal({'items': [{'price': 2.0, 'qty': 3}]})\", 6.0)"),
    _c("free_shipping_boundary", "boundary change", "orders.py", ORDERS,
       "    if subtotal(order) >= FREE_SHIPPING_FROM:", "    if subtotal(order) > FREE_SHIPPING_FROM:",
       "expect(\"m.shipping({'items': [{'price': 50.0, 'qty': 1}]})\", 0.0)\n"
       "expect(\"m.shipping({'items': [{'price': 10.0, 'qty': 1}]})\", 4.99)"),
    _c("add_item_mutable_default", "mutable default", "orders.py", ORDERS,
       "items: list | None = None) -> list:\n"
       "    \"\"\"Append an item to ``items`` (a new list when none is given) and return the list.\"\"\"\n"
       "    if items is None:\n        items = []\n",
       "items: list = []) -> list:\n"
       "    \"\"\"Append an item to ``items`` (a new list when none is given) and return the list.\"\"\"\n",
       "m.add_item('a', 1.0)\nexpect(\"m.add_item('b', 2.0)\", [{'name': 'b', 'price': 2.0, 'qty': 1}])"),
    _c("total_wrong_sign", "wrong operator", "orders.py", ORDERS,
       "(1 + TAX_RATE) + shipping(order)", "(1 + TAX_RATE) - shipping(order)",
       "expect(\"m.total({'items': [{'price': 10.0, 'qty': 1}]})\", 16.99)"),
    _c("port_error_swallowed", "exception swallowed", "config.py", CONFIG,
       "        raise ConfigError(f\"port must be a number, not {settings.get('port')!r}\") from e\n",
       "        value = 8080\n",
       "raises(\"m.port({'port': 'http'})\", m.ConfigError)\nexpect(\"m.port({'port': '443'})\", 443)"),
    _c("retries_and_or", "wrong operator", "config.py", CONFIG,
       "    if value < 0 or value > 10:", "    if value < 0 and value > 10:",
       "raises(\"m.retries({'retries': 11})\", m.ConfigError)\nexpect('m.retries({})', 3)"),
    _c("page_slice_off_by_one", "off-by-one", "paging.py", PAGING,
       "    return items[start:start + size]", "    return items[start:start + size - 1]",
       "expect('m.page(list(range(10)), 1, 3)', [0, 1, 2])\nexpect('m.page(list(range(10)), 4, 3)', [9])"),
    _c("chunks_range_off_by_one", "off-by-one", "paging.py", PAGING,
       "for i in range(0, len(items), size)]", "for i in range(0, len(items) - size, size)]",
       "expect('m.chunks([1, 2, 3, 4, 5], 2)', [[1, 2], [3, 4], [5]])"),
]

BENIGN: list[Case] = [
    _c("shorten_rename_local", "benign", "textwrap.py", "stdlib:textwrap.py",
       "    w = TextWrapper(width=width, max_lines=1, **kwargs)\n    return w.fill(",
       "    wrapper = TextWrapper(width=width, max_lines=1, **kwargs)\n    return wrapper.fill(",
       "expect(\"m.shorten('Hello  world!', width=12)\", 'Hello world!')"),
    _c("isleap_equivalent", "benign", "calendar.py", "stdlib:calendar.py",
       "return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
       "return (year % 4 == 0 and year % 100 != 0) or year % 400 == 0",
       "expect('m.isleap(2024)', True)\nexpect('m.isleap(2000)', True)\nexpect('m.isleap(1900)', False)"),
    _c("subtotal_rename", "benign", "orders.py", ORDERS,
       'sum(item["price"] * item["qty"] for item in order["items"])',
       'sum(line["price"] * line["qty"] for line in order["items"])',
       "expect(\"m.subtotal({'items': [{'price': 2.0, 'qty': 3}]})\", 6.0)"),
    _c("retries_chained", "benign", "config.py", CONFIG,
       "    if value < 0 or value > 10:", "    if not 0 <= value <= 10:",
       "raises(\"m.retries({'retries': 11})\", m.ConfigError)\nexpect('m.retries({})', 3)"),
]
