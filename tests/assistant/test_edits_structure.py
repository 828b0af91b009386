"""The structure guard (a used definition is not removed, renamed or re-nested unless asked) and whole-block
edits that keep the selection's base indentation."""

from __future__ import annotations

import pytest

from corolla.assistant.edits import Allowance, Edit, Target, parse_reply, propose, structural_changes
from corolla.assistant.edits.structure import check_structure
from corolla.assistant.errors import StructureBreakError

MODULE = '''\
__all__ = ["area", "LIMIT"]

LIMIT = 10
_cache = {}


def area(w, h):
    return _scale(w) * h


def _scale(x):
    return x


def _unused():
    return 0


def perimeter(w, h):
    return 2 * (w + h)


class Shape:
    def size(self):
        return self._inner()

    def _inner(self):
        return 1

    def _spare(self):
        return 2

    def __repr__(self):
        return "Shape()"
'''


def changes(after: str) -> list[tuple[str, str, str, str]]:
    return [(c.qualname, c.change, c.used, c.to) for c in structural_changes(MODULE, after)]


def test_body_changes_are_not_structural():
    assert changes(MODULE.replace("return 2 * (w + h)", "return w + w + h + h")) == []
    assert changes(MODULE + "\n\ndef extra():\n    return 3\n") == []  # adding is fine


@pytest.mark.parametrize("old, new, expected", [
    # removing a function listed in __all__, a public one, a private one the file still calls
    ('def area(w, h):\n    return _scale(w) * h\n', "", ("area", "removed", "exported", "")),
    ('def perimeter(w, h):\n    return 2 * (w + h)\n', "", ("perimeter", "removed", "public", "")),
    ("def _scale(x):\n    return x\n", "", ("_scale", "removed", "referenced", "")),
    # renames and a variable exported by __all__
    ("def perimeter(w, h):", "def perim(w, h):", ("perimeter", "renamed", "public", "perim")),
    ("LIMIT = 10\n", "MAX = 10\n", ("LIMIT", "renamed", "exported", "MAX")),
    ("LIMIT = 10\n", "", ("LIMIT", "removed", "exported", "")),
    # methods: public, private but called through self, a dunder
    ("    def size(self):", "    def get_size(self):", ("Shape.size", "renamed", "public", "Shape.get_size")),
    ("    def _inner(self):\n        return 1\n", "", ("Shape._inner", "removed", "referenced", "")),
    ('    def __repr__(self):\n        return "Shape()"\n', "", ("Shape.__repr__", "removed", "public", "")),
    # re-nested: a function indented into the one above it
    ("def perimeter(w, h):\n    return 2 * (w + h)\n", "    def perimeter(w, h):\n        return 2 * (w + h)\n",
     ("perimeter", "nested", "public", "_unused.perimeter")),
])
def test_used_definitions_removed_renamed_or_nested(old, new, expected):
    assert old in MODULE
    assert changes(MODULE.replace(old, new)) == [expected]


def test_private_definitions_nothing_uses_may_go():
    after = MODULE.replace("def _unused():\n    return 0\n", "").replace(
        "    def _spare(self):\n        return 2\n", "")
    assert changes(after) == []
    # a private helper removed together with its only call: nothing refers to it any more
    after = MODULE.replace("return _scale(w) * h", "return w * h").replace("def _scale(x):\n    return x\n", "")
    assert changes(after) == []


def test_a_method_moved_into_another_class_or_out_to_the_module():
    after = MODULE.replace("class Shape:", "class Other:\n    pass\n\n\nclass Shape:") \
        .replace('    def __repr__(self):\n        return "Shape()"\n', "")
    after = after.replace("class Other:\n    pass\n",
                          'class Other:\n    def __repr__(self):\n        return "Shape()"\n')
    assert changes(after) == [("Shape.__repr__", "moved", "public", "Other.__repr__")]
    described = structural_changes(MODULE, after)[0].describe()
    assert described.startswith("`Shape.__repr__` would move into class `Other`")


def test_the_message_names_the_definition_and_what_happened():
    after = MODULE.replace("def perimeter(w, h):\n    return 2 * (w + h)\n",
                           "    def perimeter(w, h):\n        return 2 * (w + h)\n")
    with pytest.raises(StructureBreakError) as info:
        check_structure("geo.py", MODULE, after)
    assert "`perimeter` would become nested inside `_unused`" in str(info.value)
    assert [c.change for c in info.value.changes] == ["nested"]


@pytest.mark.parametrize("request_text, allowed", [
    ("rename perimeter to perim", True),
    ("Please remove `perimeter`, it is dead code", True),
    ("move perimeter into _unused", True),
    ("fix the bug in perimeter", False),  # names it, but asks for no structural change
    ("rename area to surface", False),  # asks for a rename, of another definition
    ("", False),
])
def test_allowed_when_the_request_asks(request_text, allowed):
    after = MODULE.replace("def perimeter(w, h):", "def perim(w, h):")
    allow = Allowance.from_request(request_text)
    if allowed:
        check_structure("geo.py", MODULE, after, allow)
    else:
        with pytest.raises(StructureBreakError):
            check_structure("geo.py", MODULE, after, allow)


def test_allowed_by_the_explicit_flag_for_dotted_names_and_other_languages():
    after = MODULE.replace("    def size(self):", "    def get_size(self):")
    check_structure("geo.py", MODULE, after, Allowance(everything=True))
    check_structure("geo.py", MODULE, after, Allowance.from_request("rename Shape.size to get_size"))
    check_structure("geo.js", "function f() {}\n", "function g() {}\n")  # Python only
    check_structure("geo.py", "def f(:\n", "")  # the file did not parse: the syntax guard's business
    check_structure("geo.py", None, "x = 1\n")  # a new file


def test_propose_refuses_with_the_reason_and_takes_the_allowance(tmp_path):
    (tmp_path / "geo.py").write_text(MODULE)
    edit = Edit("geo.py", "def perimeter(w, h):", "def perim(w, h):")
    with pytest.raises(StructureBreakError, match=r"geo\.py: .*`perimeter` would be renamed to `perim`"):
        propose(tmp_path, [edit])
    assert propose(tmp_path, [edit], allow=Allowance.from_request("rename perimeter")).changes
    assert (tmp_path / "geo.py").read_text() == MODULE


def test_an_allowed_rename_or_removal_must_not_leave_uses_of_the_old_name():
    source = "def calc_avg(xs):\n    return sum(xs) / len(xs)\n\n\ndef spread(xs):\n    return calc_avg(xs) * 2\n"
    renamed = source.replace("def calc_avg(", "def mean_of(")
    allow = Allowance.from_request("rename calc_avg to mean_of")
    with pytest.raises(StructureBreakError, match=r"`calc_avg` would be renamed to `mean_of` but the file still "
                                                  r"uses `calc_avg` \(line 6\)"):
        check_structure("stats.py", source, renamed, allow)
    with pytest.raises(StructureBreakError, match="names that nothing defines"):
        check_structure("stats.py", source, renamed, Allowance(everything=True))
    check_structure("stats.py", source, renamed.replace("calc_avg(xs) * 2", "mean_of(xs) * 2"), allow)
    # the name still defined another way (imported back, a parameter), or a builtin: nothing dangles
    check_structure("stats.py", source, "from lib import calc_avg\n" + renamed, allow)
    removed = "def spread(xs, calc_avg=len):\n    return calc_avg(xs) * 2\n"
    check_structure("stats.py", source, removed, Allowance.from_request("remove calc_avg"))
    check_structure("m.py", "def len(x):\n    return 0\n\n\nn = len([])\n", "n = len([])\n",
                    Allowance.from_request("remove len"))


# --- whole-block edits keep the selection's base indentation ---------------------------------------
SOURCE = "class A:\n    def f(self):\n        if x:\n            y = 1\n        return y\n\n\ndef g():\n    return 2\n"


def whole(reply_code: str, start: int, end: int) -> str:
    edits = parse_reply("whole", f"```python\n{reply_code}```", target=Target("m.py", start, end), source=SOURCE)
    e = edits[0]
    lines = SOURCE.splitlines(keepends=True)
    return "".join(lines[:start - 1]) + e.new + "".join(lines[end:]) if e.old else e.new


@pytest.mark.parametrize("reply", [
    "def g():\n    return 3\n",  # as it should be
    "    def g():\n        return 3\n",  # four spaces deeper: would nest g inside A.f
    "        def g():\n            return 3\n",
])
def test_a_top_level_block_stays_top_level(reply):
    assert whole(reply, 8, 9) == SOURCE.replace("return 2", "return 3")


def test_a_method_sent_back_dedented_or_deeper_keeps_its_indentation():
    method = "def f(self):\n    if x:\n        y = 1\n    return y\n"
    for shift in ("", "        "):
        reply = "".join(shift + x if x.strip() else x for x in method.replace("y = 1", "y = 2").splitlines(True))
        assert whole(reply, 2, 5) == SOURCE.replace("y = 1", "y = 2")


def test_a_range_starting_deeper_than_it_ends_may_come_back_with_its_deeper_lines_only():
    # lines 4-5 start at 12 spaces and end at 8; a reply of only 12-space lines keeps its first line's place
    assert whole("            y = 2\n", 4, 4) == SOURCE.replace("y = 1", "y = 2")
    assert whole("                y = 2\n", 4, 4) == SOURCE.replace("y = 1", "y = 2")  # sent back deeper
    assert whole("                y = 2\n", 4, 5) == SOURCE.replace("y = 1\n        return y", "y = 2")
    got = whole("            y = 2\n            z = 3\n", 4, 5)
    assert got == SOURCE.replace("            y = 1\n        return y\n", "            y = 2\n            z = 3\n")
