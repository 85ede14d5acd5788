"""The auto-registration budget: per message and per city over a sliding minute."""

from __future__ import annotations

from core.telemetry import REGISTRATIONS_REFUSED
from processors.registration import RegistrationBudget


def _refused(limit: str) -> float:
    return REGISTRATIONS_REFUSED.labels(limit)._value.get()


def test_one_message_registers_at_most_its_share_and_the_refusals_are_counted() -> None:
    budget = RegistrationBudget(per_message=3, per_city_minute=100, clock=lambda: 0.0)
    before = _refused("per_message")
    flood = [("other", f"ngsi-{i}", 0) for i in range(50)]  # one notification naming 50 entities
    assert budget.admit([*flood, ("other", "x", 1)]) == [
        ("other", "ngsi-0"),
        ("other", "ngsi-1"),
        ("other", "ngsi-2"),
        ("other", "x"),
    ]
    assert _refused("per_message") - before == 47


def test_a_city_registers_at_most_its_minute_budget_and_recovers_after_a_minute() -> None:
    now = [0.0]
    budget = RegistrationBudget(per_message=100, per_city_minute=5, clock=lambda: now[0])
    assert len(budget.admit([("demo", f"d{i}", i) for i in range(8)])) == 5
    assert budget.admit([("other", "o1", 0)]) == [("other", "o1")]  # another city's budget is its own
    now[0] = 59.0
    assert budget.admit([("demo", "late", 0)]) == []
    now[0] = 60.0
    assert len(budget.admit([("demo", f"e{i}", i) for i in range(8)])) == 5


def test_direct_writes_without_a_message_skip_only_the_per_message_cap() -> None:
    budget = RegistrationBudget(per_message=1, per_city_minute=4, clock=lambda: 0.0)
    assert len(budget.admit([("demo", f"d{i}", -1) for i in range(6)])) == 4
