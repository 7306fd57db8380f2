"""
A game session's independent facts, kept as the bits of one int
(L{gateway.session.lifecycle.Fact}): they behave as eight separate booleans,
whatever is set in whatever order.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.session.ending import SessionEnding
from gateway.session.lifecycle import Fact

NAMES = [name for name, value in vars(SessionEnding).items() if isinstance(value, Fact)]


class Facts(SessionEnding):
    """
    Just the facts of a session.
    """

    __slots__ = ()

    def __init__(self) -> None:
        self._facts = 0


def test_a_session_has_eight_facts() -> None:
    assert sorted(NAMES) == [
        "_backend_eof",
        "_backend_gone",
        "_client_eof",
        "_client_feeds_server",
        "_client_gone",
        "_client_paused",
        "_server_feeds_client",
        "spliced",
    ]


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.booleans())))
def test_facts_are_independent_booleans(sets: list[tuple[str, bool]]) -> None:
    facts, expected = Facts(), dict.fromkeys(NAMES, False)
    for name, value in sets:
        setattr(facts, name, value)
        expected[name] = value
        assert {name: getattr(facts, name) for name in NAMES} == expected
    assert all(type(getattr(facts, name)) is bool for name in NAMES)
    # One bit each, in the order they are declared.
    assert facts._facts == sum(1 << i for i, name in enumerate(NAMES) if expected[name])
