"""The TRANSITIONS table is the documentation of the session state machine: check it."""

from __future__ import annotations

from collections import deque

from gateway.core import TRANSITIONS, Event, SessionState

S = SessionState


def test_table_uses_only_known_states_and_events() -> None:
    """Every key and target is a SessionState / Event member."""
    for (state, event), target in TRANSITIONS.items():
        assert isinstance(state, SessionState)
        assert isinstance(event, Event)
        assert isinstance(target, SessionState)


def test_every_state_has_an_exit_and_every_event_is_used() -> None:
    """No dead end: each state leaves on some event; each event appears in the table."""
    sources = {state for state, _ in TRANSITIONS}
    assert sources == set(SessionState)
    for state in SessionState:
        assert any(
            target is not state for (src, _), target in TRANSITIONS.items() if src is state
        ) or state in (S.DISCONNECTED, S.LOST), state
    assert {event for _, event in TRANSITIONS} == set(Event)


def test_every_state_is_reachable_from_disconnected() -> None:
    """Breadth-first over the table from DISCONNECTED reaches every state."""
    seen = {S.DISCONNECTED}
    todo = deque([S.DISCONNECTED])
    while todo:
        state = todo.popleft()
        for (src, _), target in TRANSITIONS.items():
            if src is state and target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(SessionState)


def test_every_state_can_reach_active_again() -> None:
    """From any state a CONNECT leads back (via CONNECTING) to ACTIVE."""
    for state in SessionState:
        assert TRANSITIONS[(state, Event.CONNECT)] is S.CONNECTING
    assert TRANSITIONS[(S.CONNECTING, Event.CONNECTED)] is S.ACTIVE


def test_the_spec_state_table() -> None:
    """Reference §5.14 rows, as table entries."""
    assert TRANSITIONS[(S.ACTIVE, Event.DISCONNECT)] is S.DISCONNECTED
    assert TRANSITIONS[(S.ACTIVE, Event.SLEEP)] is S.ASLEEP
    assert TRANSITIONS[(S.ACTIVE, Event.EXPIRED)] is S.LOST
    assert TRANSITIONS[(S.ASLEEP, Event.WAKE)] is S.AWAKE
    assert TRANSITIONS[(S.AWAKE, Event.FLUSHED)] is S.ASLEEP
    assert TRANSITIONS[(S.ASLEEP, Event.EXPIRED)] is S.LOST
    assert TRANSITIONS[(S.ASLEEP, Event.DISCONNECT)] is S.DISCONNECTED
    assert TRANSITIONS[(S.AWAKE, Event.DISCONNECT)] is S.DISCONNECTED
    assert TRANSITIONS[(S.ASLEEP, Event.SLEEP)] is S.ASLEEP
    assert TRANSITIONS[(S.AWAKE, Event.SLEEP)] is S.ASLEEP
    # A sleeping node never reaches the retry path (nothing is in flight while asleep).
    assert (S.ASLEEP, Event.RETRY_EXHAUSTED) not in TRANSITIONS
