"""What a schedule's slot will use: the values of its relative dates at
its next slot (`next_slot_params` in schedule JSON), and the preview the
schedule form asks for while it is typed (POST /api/schedule-preview)."""
import cron
from errors import InputError
from params import dump_params
from reldates import check_zone, describe, resolve_params
from reports import find_report


def slot_params(registry, schedule, slot):
    """The parameter values the run of `schedule` for naive UTC `slot` will
    use, or None (no slot; or the report changed and the run will fail)."""
    if slot is None:
        return None
    try:
        definition = find_report(registry, schedule.report)
        values, _ = resolve_params(definition.params, schedule.params,
                                   cron.check_timezone(schedule.timezone), slot)
        return dump_params(definition.parse(values))
    except (InputError, ValueError):
        return None


PREVIEW_FIELDS = ('report', 'params', 'cron', 'timezone')


def preview(registry, settings, data, now):
    """What a schedule being written would use at its next slot after `now`:
    the schedule form shows it while the user types. InputError names the
    field that keeps it from being worked out."""
    unknown = sorted(set(data) - set(PREVIEW_FIELDS))
    if unknown:
        raise InputError(unknown[0], 'unknown field; expected %s' % ', '.join(PREVIEW_FIELDS),
                         code='unknown_field')
    definition = find_report(registry, data.get('report'))
    raw = data.get('params', {})
    if not isinstance(raw, dict):
        raise InputError('params', 'must be an object of parameter values')
    try:
        expression = cron.check_cron(data.get('cron'))
    except ValueError as exc:
        raise InputError('cron', str(exc))
    name = data.get('timezone', '')
    if not isinstance(name, str):
        raise InputError('timezone', 'give an IANA timezone such as Europe/Lisbon')
    name = name or settings.timezone  # as a schedule without one
    zone = check_zone(name)
    slot = cron.next_slot(expression, zone, now)
    if slot is None:
        raise InputError('cron', '%r never fires again' % expression)
    values, asked = resolve_params(definition.params, raw, zone, slot)
    used = dump_params(definition.parse(values))
    return {'report': definition.name, 'timezone': name, 'slot_at': slot.isoformat() + 'Z',
            'slot_local': cron.to_local(slot, zone).isoformat(), 'params': used,
            'asked': asked, 'text': describe(used, asked, name)}
