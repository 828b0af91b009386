import inspect

import scaling


def _text(annotation):
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def test_scale_is_annotated():
    sig = inspect.signature(scaling.scale)
    for name in ("values", "factor"):
        assert sig.parameters[name].annotation is not inspect.Parameter.empty, name
    assert sig.return_annotation is not inspect.Signature.empty
    assert "float" in _text(sig.parameters["factor"].annotation)
    assert "list" in _text(sig.parameters["values"].annotation).lower()
    assert "list" in _text(sig.return_annotation).lower()


def test_behaviour_unchanged():
    assert scaling.scale([1.0, 2.0], 3.0) == [3.0, 6.0]
    assert scaling.scale([], 2.0) == []
    assert scaling.to_metres([100.0], "cm") == [1.0]
