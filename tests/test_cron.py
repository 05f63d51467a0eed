"""Slot computation with time passed in: ordinary days, month ends, DST."""
from datetime import datetime as dt, timedelta

import pytest

from cron import check_cron, check_timezone, next_slot, slots_between

LISBON = check_timezone('Europe/Lisbon')
NEW_YORK = check_timezone('America/New_York')
SAO_PAULO = check_timezone('America/Sao_Paulo')
UTC = check_timezone('UTC')


def test_daily_in_lisbon_follows_summer_time():
    # 02:30 Lisbon is 02:30 UTC in winter (WET) and 01:30 UTC in summer (WEST).
    assert slots_between('30 2 * * *', LISBON, dt(2025, 1, 10), dt(2025, 1, 12)) == \
        [dt(2025, 1, 10, 2, 30), dt(2025, 1, 11, 2, 30)]
    assert slots_between('30 2 * * *', LISBON, dt(2025, 7, 10), dt(2025, 7, 12)) == \
        [dt(2025, 7, 10, 1, 30), dt(2025, 7, 11, 1, 30)]


def test_bounds_are_exclusive_then_inclusive():
    slots = slots_between('0 * * * *', UTC, dt(2025, 1, 1, 1), dt(2025, 1, 1, 3))
    assert slots == [dt(2025, 1, 1, 2), dt(2025, 1, 1, 3)]


def test_month_ends():
    assert slots_between('0 6 31 * *', UTC, dt(2025, 1, 1), dt(2025, 6, 1)) == \
        [dt(2025, 1, 31, 6), dt(2025, 3, 31, 6), dt(2025, 5, 31, 6)]
    assert slots_between('0 0 1 * *', LISBON, dt(2025, 1, 15), dt(2025, 5, 15)) == \
        [dt(2025, 2, 1), dt(2025, 3, 1), dt(2025, 3, 31, 23), dt(2025, 4, 30, 23)]
    assert next_slot('0 0 29 2 *', UTC, dt(2025, 3, 1)) == dt(2028, 2, 29)


@pytest.mark.parametrize('expression, zone, day, expected', [
    # Lisbon springs forward 2025-03-30 01:00 -> 02:00: 01:30 does not exist.
    ('30 1 * * *', LISBON, (2025, 3, 30), [dt(2025, 3, 30, 1, 30)]),
    # New York springs forward 2025-03-09 02:00 -> 03:00: 02:30 does not exist.
    ('30 2 * * *', NEW_YORK, (2025, 3, 9), [dt(2025, 3, 9, 7, 30)]),
    # Sao Paulo (2018) sprang forward at midnight: 00:00 did not exist.
    ('0 0 * * *', SAO_PAULO, (2018, 11, 4), [dt(2018, 11, 4, 3, 0)]),
])
def test_a_slot_in_the_spring_gap_still_runs_once(expression, zone, day, expected):
    slots = slots_between(expression, zone, dt(*day) - timedelta(hours=6),
                          dt(*day) + timedelta(hours=18))
    assert slots == expected


@pytest.mark.parametrize('expression, zone, after, until, expected', [
    # Lisbon falls back 2025-10-26 02:00 -> 01:00: 01:30 happens twice; first one only.
    ('30 1 * * *', LISBON, dt(2025, 10, 25, 12), dt(2025, 10, 26, 12), [dt(2025, 10, 26, 0, 30)]),
    # New York falls back 2025-11-02 02:00 -> 01:00.
    ('30 1 * * *', NEW_YORK, dt(2025, 11, 1, 12), dt(2025, 11, 2, 12), [dt(2025, 11, 2, 5, 30)]),
    # Sao Paulo (2019) fell back at midnight: 23:30 on the 16th happened twice.
    ('30 23 * * *', SAO_PAULO, dt(2019, 2, 16, 12), dt(2019, 2, 17, 12),
     [dt(2019, 2, 17, 1, 30)]),
])
def test_a_repeated_hour_runs_once(expression, zone, after, until, expected):
    assert slots_between(expression, zone, after, until) == expected


def test_hourly_across_dst_changes_has_no_duplicates():
    # Spring: wall 02:00 does not exist and lands on 03:00; one slot, not two.
    assert slots_between('0 * * * *', NEW_YORK, dt(2025, 3, 9, 4, 30), dt(2025, 3, 9, 9)) == \
        [dt(2025, 3, 9, 5), dt(2025, 3, 9, 6), dt(2025, 3, 9, 7), dt(2025, 3, 9, 8),
         dt(2025, 3, 9, 9)]
    # Autumn: wall 01:00 happens twice; an hourly schedule runs at both.
    assert slots_between('0 * * * *', NEW_YORK, dt(2025, 11, 2, 3, 30), dt(2025, 11, 2, 8)) == \
        [dt(2025, 11, 2, 4), dt(2025, 11, 2, 5), dt(2025, 11, 2, 6), dt(2025, 11, 2, 7),
         dt(2025, 11, 2, 8)]


def test_aliases():
    assert check_cron('@DAILY') == '@daily'
    assert slots_between('@daily', LISBON, dt(2025, 7, 1), dt(2025, 7, 3)) == \
        [dt(2025, 7, 1, 23), dt(2025, 7, 2, 23)]
    assert slots_between('@hourly', UTC, dt(2025, 1, 1), dt(2025, 1, 1, 2)) == \
        [dt(2025, 1, 1, 1), dt(2025, 1, 1, 2)]
    assert next_slot('@weekly', UTC, dt(2025, 1, 1)) == dt(2025, 1, 5)  # a Sunday


def test_next_slot():
    assert next_slot('30 2 * * *', LISBON, dt(2025, 7, 10, 1, 30)) == dt(2025, 7, 11, 1, 30)
    assert next_slot('*/15 * * * *', UTC, dt(2025, 1, 1, 0, 7)) == dt(2025, 1, 1, 0, 15)


def test_limit_keeps_the_most_recent():
    slots = slots_between('* * * * *', UTC, dt(2025, 1, 1), dt(2025, 1, 2), limit=3)
    assert slots == [dt(2025, 1, 1, 23, 58), dt(2025, 1, 1, 23, 59), dt(2025, 1, 2)]


@pytest.mark.parametrize('expression, words', [
    ('', 'give a cron'),
    ('* * * *', '5 fields'),
    ('* * * * * *', '5 fields'),
    ('61 * * * *', 'not a valid'),
    ('0 0 30 2 *', 'never fires'),
    ('@fortnightly', 'unknown alias'),
    ('every day', '5 fields'),
    (None, 'give a cron'),
])
def test_bad_cron(expression, words):
    with pytest.raises(ValueError, match=words):
        check_cron(expression)


@pytest.mark.parametrize('name', ['Mars/Olympus', '', '../etc/passwd', '/etc/localtime', None])
def test_bad_timezone(name):
    with pytest.raises(ValueError):
        check_timezone(name)
