"""The API's message preview: what a run's or a schedule's templates would
send, before they are saved."""
import cron
from errors import InputError
from formats import EXTENSIONS, check_format
from guards import json_response
from inputs import read_json_body
from models import utcnow
from params import dump_params
from reports import find_report
from runmessages import MESSAGE_FIELDS, preview

PREVIEW_FIELDS = ('report', 'params', 'cron', 'timezone', 'format') + MESSAGE_FIELDS


def install_message_preview(app, settings, registry):
    @app.post('/api/messages/preview')
    def preview_message():
        """Render subject, body and attachment name with sample values (1,234
        rows) and the date of the schedule's next slot (given `cron` and
        `timezone`) or today's. A template that would be refused on saving
        is refused here the same way, naming the field."""
        body = read_json_body(settings.max_body_bytes)
        unknown = sorted(set(body) - set(PREVIEW_FIELDS))
        if unknown:
            raise InputError(unknown[0], 'unknown field; expected %s'
                             % ', '.join(PREVIEW_FIELDS), code='unknown_field')
        definition = find_report(registry, body.get('report'))
        if 'params' in body and not isinstance(body['params'], dict):
            raise InputError('params', 'must be an object of parameter values')
        params = dump_params(definition.parse(body.get('params')))
        zone = slot = None
        if body.get('timezone'):
            try:
                zone = cron.check_timezone(body['timezone'])
            except ValueError as exc:
                raise InputError('timezone', str(exc))
        if body.get('cron'):
            try:
                expression = cron.check_cron(body['cron'])
            except ValueError as exc:
                raise InputError('cron', str(exc))
            zone = zone or cron.check_timezone(settings.timezone)
            slot = cron.next_slot(expression, zone, utcnow())
        # The attachment's name ends as the chosen format's file (formats.py).
        extension = EXTENSIONS[check_format(body.get('format'), given='format' in body)]
        return json_response(200, preview(definition, params, body, settings, zone=zone,
                                          slot=slot, extension=extension))
