"""Try before you schedule: a schedule's next slot, sent now to one address.

The test run is made by the same function that makes a slot's run
(schedules._create_slot_run), so its parameters are those the slot will use;
it is recorded with trigger `test` and the slot in `test_slot_at`, never in
`slot_at`: the slot keeps its place in the (schedule, slot_at) index, its
mark (`checked_through`) is untouched, and it runs at its time as usual.
"""
import cron
import runs
import schedules
from errors import Conflict, InputError
from vocab import Trigger


def send_test(registry, settings, schedule, to, now):
    """Record a queued test run of `schedule`'s next slot for the one
    address `to` (checked like any recipient: allowed_domains included).
    InputError on `to`; Conflict when the cron has no next slot."""
    if to is None or isinstance(to, str) and not to.strip(' '):
        raise InputError('to', 'give the one address the test goes to', code='required')
    if not isinstance(to, str):
        raise InputError('to', 'must be one email address, as text')
    try:
        [address] = runs.parse_recipients([to], settings)
    except InputError as exc:
        raise InputError('to', exc.message, code=exc.code)
    zone = cron.check_timezone(schedule.timezone)
    # A paused schedule can be tried too: the slot it would have next.
    slot = cron.next_slot(schedule.cron, zone, max(now, schedule.checked_through))
    if slot is None:
        raise Conflict('schedule %r has no next slot to try' % schedule.name, 'cron')
    return schedules._create_slot_run(registry, settings, schedule, slot, now,
                                      to=[address], trigger=Trigger.TEST)
