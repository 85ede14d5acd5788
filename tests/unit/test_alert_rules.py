"""Alert rules as data: what each statistic requires, implies and refuses; every error reported."""

from __future__ import annotations

import pytest

from processors.alert_rules import DEFAULT_RULES, LIMITS, AlertRulesError, parse_rules
from schemas.metrics import METRICS


def test_the_shipped_rules_parse_and_name_real_metrics_and_limits() -> None:
    rules = parse_rules(DEFAULT_RULES.read_text(), str(DEFAULT_RULES))
    assert {r.statistic for r in rules} == {"reading", "rolling_mean", "exceedance", "no_data", "stuck"}
    assert all(r.metric in METRICS and r.threshold is not None for r in rules)


def test_an_exceedance_takes_metric_window_and_threshold_from_its_limit() -> None:
    (rule,) = parse_rules('[[rules]]\nrule_id = "a"\nstatistic = "exceedance"\nlimit = "who2021_pm25_24h"')
    assert (rule.metric, rule.window_min, rule.threshold) == ("pm25", 1440, 15.0)
    assert LIMITS["eu2008_no2_1h"].value == 200.0


def test_no_data_and_stuck_imply_their_thresholds() -> None:
    no_data, stuck = parse_rules(
        '[[rules]]\nrule_id = "a"\nmetric = "laeq"\nstatistic = "no_data"\nwindow_min = 5\n'
        '[[rules]]\nrule_id = "b"\nmetric = "pm25"\nstatistic = "stuck"\n'
    )
    assert no_data.threshold == 5.0 and stuck.threshold == 0.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('metric = "pm25"\nstatistic = "exceedance"\nlimit = "who2021_no2_24h"', "contradicts"),
        ('statistic = "exceedance"\nlimit = "who2099"', "exceedance needs limit"),
        ('metric = "pm25"\nstatistic = "rolling_mean"\nthreshold = 1.0', "needs window_min"),
        ('metric = "pm25"\nstatistic = "reading"', "needs a threshold"),
        ('metric = "pm25"\nstatistic = "reading"\nthreshold = 1.0\nwindow_min = 5', "takes no window_min"),
        ('metric = "pm25"\nstatistic = "no_data"\nwindow_min = 5\nthreshold = 1.0', "no_data takes no"),
        ('metric = "nope"\nstatistic = "reading"\nthreshold = 1.0', "unknown metric"),
        ('metric = "pm25"\nstatistic = "reading"\nthreshold = nan', "finite"),
        ('metric = "pm25"\nstatistic = "reading"\nthreshold = 1.0\nhysteresis = -1', "greater than or equal"),
        ('metric = "pm25"\nstatistic = "reading"\nthreshold = 1.0\nseverity = "panic"', "severity"),
        ('metric = "pm25"\nstatistic = "reading"\nthreshold = 1.0\ncolour = "red"', "colour"),
    ],
)
def test_a_bad_rule_is_refused_with_its_number_and_reason(body: str, message: str) -> None:
    ok = '[[rules]]\nrule_id = "ok"\nmetric = "pm25"\nstatistic = "stuck"\n'
    text = f'{ok}[[rules]]\nrule_id = "bad"\n{body}'
    with pytest.raises(AlertRulesError) as e:
        parse_rules(text)
    assert len(e.value.errors) == 1 and e.value.errors[0].startswith("rule 2 (bad)")
    assert message in e.value.errors[0]


def test_every_error_of_a_file_is_reported_together() -> None:
    text = (
        'stray = 1\n[[rules]]\nrule_id = "a b"\nstatistic = "reading"\n'
        '[[rules]]\nrule_id = "x"\nmetric = "pm25"\nstatistic = "stuck"\n'
        '[[rules]]\nrule_id = "x"\nmetric = "pm25"\nstatistic = "stuck"\n'
    )
    with pytest.raises(AlertRulesError) as e:
        parse_rules(text)
    assert len(e.value.errors) == 3
    assert "stray" in e.value.errors[0] and "appears twice" in e.value.errors[2]
    with pytest.raises(AlertRulesError, match="not TOML"):
        parse_rules("[[rules]\n")
