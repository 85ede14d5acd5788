"""The MQTT reconnect policy: jittered exponential backoff, started over after a lost connection."""

from __future__ import annotations

import pytest

from ingest.mqtt.network import _Lost, _NotConnected, reconnect_policy


def run(outcomes: list[BaseException | None], max_s: float = 30.0) -> list[float]:
    """Run the policy over a session failing with `outcomes` in turn (None: closed); the waits."""
    waits: list[float] = []
    todo = iter(outcomes)

    def session() -> None:
        error = next(todo)
        if error is not None:
            raise error

    reconnect_policy(max_s, sleep=waits.append)(session)
    return waits


def test_backoff_doubles_from_0_2_s_with_up_to_0_5_s_of_jitter() -> None:
    waits = run([_NotConnected(), OSError(), _NotConnected(), _NotConnected(), None])
    for wait, base in zip(waits, (0.2, 0.4, 0.8, 1.6), strict=True):
        assert base <= wait <= base + 0.5


def test_a_lost_connection_starts_the_backoff_over_with_jitter() -> None:
    waits = run([_NotConnected(), _NotConnected(), _NotConnected(), _Lost(), _NotConnected(), None])
    assert 0.8 <= waits[2] <= 1.3
    assert 0.2 <= waits[3] <= 0.7  # after the loss: the first wait again
    assert 0.4 <= waits[4] <= 0.9


def test_the_first_wait_after_a_loss_is_jittered_across_a_fleet() -> None:
    firsts = {round(run([_Lost(), None])[0], 6) for _ in range(50)}
    assert len(firsts) > 40 and min(firsts) >= 0.2 and max(firsts) <= 0.7


def test_the_wait_is_capped_at_reconnect_max_s() -> None:
    assert max(run([_NotConnected()] * 12 + [None], max_s=2.0)) <= 2.0


def test_an_unexpected_error_ends_the_policy() -> None:
    with pytest.raises(ValueError):
        run([_NotConnected(), ValueError("bug")])
