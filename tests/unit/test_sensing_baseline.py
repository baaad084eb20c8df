"""Issue 16: the baseline statistics (sensing.baseline) on synthetic series — slot of the week in
the district's zone, share of weeks with use, mean and 90th percentile, and what "unusual
silence" means for a regular person, a person with quiet hours, and a person without habits."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from sensing import baseline
from sensing.baseline import SlotStats

CST = timezone(timedelta(hours=8))
MONDAY = datetime(2026, 11, 2, 0, 0, tzinfo=CST)  # a Monday, 00:00 district time


def test_slot_of_week_in_the_district_zone():
    assert baseline.slot_of_week(MONDAY) == 0
    assert baseline.slot_of_week(MONDAY + timedelta(minutes=29, seconds=59)) == 0
    assert baseline.slot_of_week(MONDAY + timedelta(minutes=30)) == 1
    assert baseline.slot_of_week(MONDAY + timedelta(days=6, hours=23, minutes=45)) == 335
    # Monday 00:00 in Shenzhen is Sunday 16:00 UTC: the zone decides, not UTC
    assert baseline.slot_of_week(datetime(2026, 11, 1, 16, 0, tzinfo=timezone.utc)) == 0
    with pytest.raises(ValueError):
        baseline.slot_of_week(datetime(2026, 11, 2, 0, 0))


def test_slot_start():
    t = datetime(2026, 11, 2, 7, 47, 12, tzinfo=CST)
    assert baseline.slot_start(t) == datetime(2026, 11, 2, 7, 30, tzinfo=CST)
    assert baseline.slot_start(datetime(2026, 11, 2, 7, 30, tzinfo=CST)) == datetime(2026, 11, 2, 7, 30, tzinfo=CST)


def test_quantile_is_linear_interpolation():
    assert baseline.quantile([1.0], 0.9) == 1.0
    assert baseline.quantile([0.0, 10.0], 0.9) == pytest.approx(9.0)
    assert baseline.quantile([3.0, 1.0, 2.0, 4.0], 0.5) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        baseline.quantile([], 0.5)


def test_slot_stats_share_of_weeks_mean_q90():
    # four Mondays; at 07:00 use in 3 weeks of 4 (0.02, 0.04, 0, 0.06); at 03:00 never
    vols = [0.02, 0.04, 0.0, 0.06]
    readings = []
    for w, v in enumerate(vols):
        day = MONDAY + timedelta(weeks=w)
        readings.append((day + timedelta(hours=7), v))
        readings.append((day + timedelta(hours=3), 0.0))
    st = baseline.slot_stats(readings)
    s7 = st[14]  # Monday 07:00 = slot 14
    assert (s7.weeks, s7.uses) == (4, 3) and s7.p_use == 0.75
    assert s7.mean == pytest.approx(0.03) and s7.max == 0.06
    assert s7.q90 == pytest.approx(baseline.quantile(vols, 0.9)) == pytest.approx(0.054)
    assert st[6] == SlotStats(weeks=4, uses=0, p_use=0.0, mean=0.0, q90=0.0, max=0.0)
    assert set(st) == {6, 14}


def test_readings_within_one_half_hour_are_summed_first():
    t = MONDAY + timedelta(hours=7)
    st = baseline.slot_stats([(t, 0.001), (t + timedelta(minutes=10), 0.002), (t + timedelta(minutes=20), 0.0)])
    assert st[14].weeks == 1 and st[14].mean == pytest.approx(0.003)


def test_smoothing_is_never_certain():
    assert baseline.smoothed(4, 4) == pytest.approx(0.9)
    assert baseline.smoothed(0, 4) == pytest.approx(0.1)
    assert 0 < baseline.smoothed(0, 2) < baseline.smoothed(2, 2) < 1


def regular_person(weeks: int = 4, wake_hour: int = 7) -> dict[int, SlotStats]:
    """Use every day at wake-up (2 h), at noon and in the evening; nothing at night."""
    readings = []
    for d in range(7 * weeks):
        day = MONDAY + timedelta(days=d)
        for slot in range(48):
            t = day + timedelta(minutes=30 * slot)
            h = t.hour + t.minute / 60
            used = (wake_hour <= h < wake_hour + 2) or 11.5 <= h < 12.5 or 18 <= h < 20
            readings.append((t, 0.01 if used else 0.0))
    return baseline.slot_stats(readings)


def test_a_missed_routine_is_unusual_within_hours():
    b = regular_person()
    monday = MONDAY + timedelta(days=28)
    # silent since the end of Sunday's evening use: the quiet night is no evidence, the missed
    # morning routine (07:00–09:00, every week) is
    last_use = monday - timedelta(hours=4)  # Sunday 20:00
    unusual_at = last_use + timedelta(hours=baseline.unusual_silence_hours(b, last_use, alpha=0.001))
    assert monday + timedelta(hours=8) < unusual_at <= monday + timedelta(hours=9)
    # silent after the morning routine: unusual once lunch and the evening use are missed — well
    # before the fixed 12-hour rule
    after_breakfast = monday + timedelta(hours=9)
    hours = baseline.unusual_silence_hours(b, after_breakfast, alpha=0.001)
    assert hours is not None and hours <= 10


def test_usual_quiet_hours_are_not_unusual():
    b = regular_person()
    night = [baseline.slot_of_week(MONDAY + timedelta(hours=h / 2)) for h in range(14)]  # 00:00–07:00
    p = math.exp(baseline.silence_log_probability(b, night))
    assert p > 0.1  # seven silent night hours are what this person always does
    morning = [baseline.slot_of_week(MONDAY + timedelta(hours=7, minutes=30 * k)) for k in range(4)]
    assert math.exp(baseline.silence_log_probability(b, morning)) < 0.001


def test_a_person_without_habits_never_becomes_unusual_by_the_baseline():
    b = baseline.slot_stats([(MONDAY + timedelta(minutes=30 * k), 0.0) for k in range(48 * 7 * 3)])
    assert baseline.unusual_silence_hours(b, MONDAY, limit_hours=48) is None


def test_min_hours_holds_back_an_early_verdict():
    b = regular_person()
    start = MONDAY + timedelta(days=7, hours=6, minutes=30)
    quick = baseline.unusual_silence_hours(b, start, alpha=0.01)
    assert quick is not None and quick < 3
    assert baseline.unusual_silence_hours(b, start, alpha=0.01, min_hours=3) == 3


def test_expected_use_follows_the_habit():
    b = regular_person()
    day = MONDAY + timedelta(days=7)
    assert baseline.expected_use(b, day, day + timedelta(hours=6)) == 0.0
    assert baseline.expected_use(b, day + timedelta(hours=7), day + timedelta(hours=9)) == pytest.approx(0.04)
