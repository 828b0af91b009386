"""The exception tree: wire codes map back to the same types; retryable flags say what to retry."""

from __future__ import annotations

import pytest

from corolla import errors
from corolla.errors import (
    WIRE_ERRORS,
    BadRequestError,
    ChecksumMismatchError,
    CorollaError,
    ModelError,
    NoRouteError,
    RateLimitedError,
    RemoteCallError,
    RequestError,
    SequenceTooLongError,
    ServerBusyError,
    ServerInternalError,
    SessionEvictedError,
    SessionLostError,
    SwarmError,
    TooManyStreamsError,
    TrainingUnsupportedError,
    UnknownAdapterError,
    UnknownModelError,
    UnknownSessionError,
    UnsupportedModelError,
    error_from_wire,
)

SERVER_SIDE = [
    BadRequestError, UnknownSessionError, SequenceTooLongError, ServerBusyError, ServerInternalError, SessionLostError,
    SessionEvictedError, UnknownAdapterError, TrainingUnsupportedError, RateLimitedError, TooManyStreamsError,
]


def all_error_classes() -> list[type[CorollaError]]:
    return [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, CorollaError)]


@pytest.mark.parametrize("cls", SERVER_SIDE, ids=lambda c: c.__name__)
def test_server_errors_travel_as_the_same_type(cls):
    original = cls("something went wrong: do X")
    back = error_from_wire(original.code, str(original))
    assert type(back) is cls
    assert str(back) == "something went wrong: do X"
    assert back.code == cls.__name__
    assert back.retryable == original.retryable


def test_wire_errors_are_exactly_the_server_side_errors():
    assert WIRE_ERRORS == {c.__name__: c for c in SERVER_SIDE}


@pytest.mark.parametrize(
    "code",
    ["", "NoSuchError", "ValueError", "KeyboardInterrupt", "CorollaError", "RequestError", "NoRouteError",
     "badrequesterror", "BadRequestError ", "__class__"],
)
def test_unknown_codes_become_server_internal_errors(code):
    back = error_from_wire(code, "boom")
    assert type(back) is ServerInternalError
    assert str(back) == "boom"
    assert back.retryable


@pytest.mark.parametrize(
    "cls, retryable",
    [
        (BadRequestError, False),
        (UnknownSessionError, False),
        (SequenceTooLongError, False),
        (RequestError, False),
        (ModelError, False),
        (UnknownModelError, False),
        (ChecksumMismatchError, False),
        (UnsupportedModelError, False),
        (SwarmError, False),
        (CorollaError, False),
        (ServerBusyError, True),
        (ServerInternalError, True),
        (RemoteCallError, True),
        (SessionLostError, True),
    ],
)
def test_retryable_flags(cls, retryable):
    assert cls.retryable is retryable
    assert cls("x").retryable is retryable


def test_no_route_error_is_retryable_and_keeps_its_fields():
    e = NoRouteError("m", [(3, 5)])
    assert e.retryable
    assert isinstance(e, SwarmError)
    assert (e.model_id, e.missing) == ("m", [(3, 5)])
    assert str(e) == "blocks 3–4 of m have no server online"


def test_request_errors_are_not_retryable_whatever_the_subclass():
    for cls in all_error_classes():
        if issubclass(cls, RequestError):
            assert not cls.retryable, cls


def test_every_error_derives_from_corolla_error_and_has_a_docstring():
    classes = all_error_classes()
    assert len(classes) >= 14
    for cls in classes:
        assert issubclass(cls, Exception)
        assert cls.__doc__ and cls.__doc__.strip(), cls
        assert cls.__name__.endswith("Error"), cls


def test_code_is_the_class_name_of_the_instance():
    assert BadRequestError("x").code == "BadRequestError"
    assert ServerBusyError("x").code == "ServerBusyError"

    class Local(ServerBusyError):
        pass

    assert Local("x").code == "Local"
    assert type(error_from_wire(Local("x").code, "x")) is ServerInternalError
