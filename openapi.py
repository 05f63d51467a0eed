"""The OpenAPI 3.0 description of the HTTP API, served at /api/openapi.json.

Built from the report registry, so report names and their parameters are
part of the contract that schemathesis checks in CI.
"""
from formats import CONTENT_TYPES, EXTENSIONS
from vocab import DeliveryStatus, FileFormat, RunStatus, SendRule, SendStatus, Trigger

PARAM_SCHEMAS = {
    'date': {'type': 'string', 'format': 'date'},
    'datetime': {'type': 'string', 'pattern': r'^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?$'},
    'int': {'type': 'integer'},
    'decimal': {'type': 'string', 'pattern': r'^-?\d+(\.\d+)?$'},
    'str': {'type': 'string', 'maxLength': 1000},
    'choice': {'type': 'string'},
    'bool': {'type': 'boolean'},
}
NULLABLE_STRING = {'type': 'string', 'nullable': True}
# The `limit` of the listings (runs, notifications).
_LIMIT = {'name': 'limit', 'in': 'query',
          'schema': {'type': 'integer', 'minimum': 1, 'maximum': 500}}


def _enum(vocabulary):
    return {'type': 'string', 'enum': [member.value for member in vocabulary]}


def _ref(name):
    return {'$ref': '#/components/schemas/%s' % name}


def _json(schema):
    return {'application/json': {'schema': schema}}


def _error(description):
    return {'description': description, 'content': _json(_ref('Error'))}


def _param_schema(param):
    schema = dict(PARAM_SCHEMAS[param.type])
    if param.choices:
        schema['enum'] = list(param.choices)
    if param.min is not None and param.type == 'int':
        schema['minimum'] = param.min
    if param.max is not None and param.type == 'int':
        schema['maximum'] = param.max
    return schema


def _components(report_names):
    return {
        'securitySchemes': {
            'bearer': {'type': 'http', 'scheme': 'bearer'},
            'basic': {'type': 'http', 'scheme': 'basic',
                      'description': 'any user name; the API token as password'},
        },
        'schemas': {
            'Error': {'type': 'object', 'required': ['error', 'message'],
                      'properties': {'error': {'type': 'string'},
                                     'message': {'type': 'string'},
                                     'field': {'type': 'string'}}},
            'Accepted': {'type': 'object', 'required': ['id', 'status', 'url'],
                         'properties': {'id': {'type': 'integer'},
                                        'status': {'type': 'string',
                                                   'enum': [RunStatus.QUEUED.value]},
                                        'url': {'type': 'string'}}},
            'Delivery': {'type': 'object', 'properties': {
                'address': {'type': 'string'},
                'status': _enum(DeliveryStatus),
                'error': NULLABLE_STRING, 'sent_at': NULLABLE_STRING,
                'part': {'type': 'boolean'}, 'rows': {'type': 'integer', 'nullable': True}}},
            'Run': {'type': 'object',
                    'required': ['id', 'report', 'params', 'to', 'status', 'rows', 'bytes',
                                 'attempts', 'error', 'trigger', 'created_at', 'started_at',
                                 'finished_at'],
                    'properties': {
                        'id': {'type': 'integer'}, 'report': {'type': 'string'},
                        'params': {'type': 'object'},
                        'to': {'type': 'array', 'items': {'type': 'string'}},
                        'status': _enum(RunStatus),
                        'rows': {'type': 'integer'}, 'bytes': {'type': 'integer'},
                        'attempts': {'type': 'integer'}, 'error': NULLABLE_STRING,
                        'trigger': _enum(Trigger),
                        'schedule': NULLABLE_STRING, 'slot_at': NULLABLE_STRING,
                        'created_at': {'type': 'string'}, 'started_at': NULLABLE_STRING,
                        'finished_at': NULLABLE_STRING, 'file_name': NULLABLE_STRING,
                        'file_bytes': {'type': 'integer', 'nullable': True},
                        'file_url': NULLABLE_STRING, 'sent_as': NULLABLE_STRING,
                        'duration_seconds': {'type': 'number', 'nullable': True},
                        'truncated': {'type': 'boolean'},
                        'late': {'type': 'boolean', 'nullable': True},
                        'escape_formulas': {'type': 'boolean'},
                        'split_by': NULLABLE_STRING,
                        'split': {'type': 'object', 'nullable': True},
                        'test_slot_at': NULLABLE_STRING,
                        'format': _enum(FileFormat),
                        'deliveries': {'type': 'array', 'items': _ref('Delivery')},
                        'asked_params': {'type': 'object'},
                        'params_timezone': NULLABLE_STRING,
                        'url': {'type': 'string'}, **_message_properties()}},
            'Schedule': {'type': 'object',
                         'required': ['name', 'report', 'params', 'to', 'cron', 'timezone',
                                      'enabled', 'managed_by', 'next_run_at'],
                         'properties': {
                             'name': {'type': 'string'}, 'report': {'type': 'string'},
                             'params': {'type': 'object'},
                             'to': {'type': 'array', 'items': {'type': 'string'}},
                             'cron': {'type': 'string'}, 'timezone': {'type': 'string'},
                             'enabled': {'type': 'boolean'},
                             'split_by': NULLABLE_STRING,
                             'format': _enum(FileFormat),
                             'managed_by': {'type': 'string', 'enum': ['api', 'config']},
                             'late_after': {'type': 'number', 'nullable': True},
                             'webhook': NULLABLE_STRING,
                             'next_run_at': NULLABLE_STRING, 'next_run_local': NULLABLE_STRING,
                             'next_slot_params': {'type': 'object', 'nullable': True},
                             'last_run': {'type': 'object', 'nullable': True},
                             'created_at': {'type': 'string'},
                             'updated_at': {'type': 'string'}, 'url': {'type': 'string'},
                             **_message_properties()}},
            'ScheduleInput': {'type': 'object', 'additionalProperties': False, 'properties': {
                'name': {'type': 'string', 'pattern': r'^[a-z0-9][a-z0-9_-]{0,63}$'},
                'report': {'type': 'string', 'enum': report_names},
                'params': {'type': 'object'},
                'to': {'type': 'array', 'minItems': 1, 'items': {'type': 'string',
                                                                 'format': 'email'}},
                'cron': {'type': 'string'}, 'timezone': {'type': 'string'},
                'enabled': {'type': 'boolean'}, 'format': _enum(FileFormat),
                'split_by': {'type': 'string', 'nullable': True},
                'late_after': {'type': 'number', 'nullable': True, 'minimum': 0},
                'webhook': {'type': 'string', 'nullable': True, 'format': 'uri'},
                **_message_properties()}},
            'RunInput': {'type': 'object', 'required': ['report', 'to'],
                         'additionalProperties': False, 'properties': {
                             'report': {'type': 'string', 'enum': report_names},
                             'params': {'type': 'object'},
                             'to': {'type': 'array', 'minItems': 1,
                                    'items': {'type': 'string', 'format': 'email'}},
                             'escape_formulas': {'type': 'boolean'},
                             'bom': {'type': 'boolean'}, 'timezone': {'type': 'string'},
                             'format': _enum(FileFormat),
                             'split_by': {'type': 'string', 'nullable': True},
                             **_message_properties()}},
            'PreviewInput': {'type': 'object', 'required': ['report', 'cron'],
                             'additionalProperties': False, 'properties': {
                                 'report': {'type': 'string', 'enum': report_names},
                                 'params': {'type': 'object'}, 'cron': {'type': 'string'},
                                 'timezone': {'type': 'string'}}},
        },
    }


def _message_properties():
    """The message fields of runs and schedules (README: The message)."""
    template = {'type': 'string', 'nullable': True,
                'description': 'a sandboxed Jinja2 template; null for the default'}
    return {'subject': template, 'body': template, 'attachment_name': template,
            'send_rule': {'type': 'string', 'nullable': True,
                          'enum': [rule.value for rule in SendRule] + [None]}}


def build_spec(registry):
    bad = _error('bad input; `field` names it')
    unauthorized = _error('no or wrong API token')
    unavailable = _error('the database or the queue is down')
    json_body = {'required': True, 'content': _json(_ref('ScheduleInput'))}
    name_param = {'name': 'name', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}
    schedule_ok = {'description': 'the schedule', 'content': _json(_ref('Schedule'))}
    not_found = _error('no such schedule')
    conflict = _error('declared in config.ini, or the name is taken')
    too_large = _error('body too large')
    not_json = _error('body not sent as application/json')
    common = {'401': unauthorized, '503': unavailable}
    file_ok = {'description': 'the file', 'content': {
        'text/csv': {'schema': {'type': 'string'}},
        'application/zip': {'schema': {'type': 'string', 'format': 'binary'}},
        CONTENT_TYPES[FileFormat.CSV_GZ]: {'schema': {'type': 'string', 'format': 'binary'}},
        CONTENT_TYPES[FileFormat.XLSX]: {'schema': {'type': 'string', 'format': 'binary'}}}}

    paths = {
        '/healthz': {'get': {'summary': 'database and queue health', 'security': [],
                             'responses': {'200': {'description': 'all up',
                                                   'content': _json({'type': 'object'})},
                                           '503': {'description': 'something is down',
                                                   'content': _json({'type': 'object'})}}}},
        '/api/reports': {'get': {'summary': 'the report catalogue', 'responses': dict(
            common, **{'200': {'description': 'reports',
                               'content': _json({'type': 'object'})}})}},
        '/api/runs': {
            'get': {'summary': 'runs, newest first', 'parameters': [
                {'name': 'report', 'in': 'query', 'schema': {'type': 'string'}},
                {'name': 'status', 'in': 'query', 'schema': _enum(RunStatus)},
                _LIMIT],
                'responses': dict(common, **{
                    '200': {'description': 'runs', 'content': _json({
                        'type': 'object', 'required': ['runs'],
                        'properties': {'runs': {'type': 'array', 'items': _ref('Run')}}})},
                    '400': bad})},
            'post': {'summary': 'email a report', 'requestBody': {
                'required': True, 'content': _json(_ref('RunInput'))},
                'responses': dict(common, **{
                    '202': {'description': 'queued', 'content': _json(_ref('Accepted')),
                            'headers': {'Location': {'schema': {'type': 'string'}}}},
                    '400': bad, '404': _error('no such report'),
                    '413': too_large, '415': not_json})}},
        '/api/runs/{id}': {'get': {
            'summary': 'one run', 'parameters': [
                {'name': 'id', 'in': 'path', 'required': True, 'schema': {'type': 'integer'}}],
            'responses': dict(common, **{
                '200': {'description': 'the run', 'content': _json(_ref('Run'))},
                '404': _error('no such run')})}},
        '/api/schedules': {
            'get': {'summary': 'schedules', 'responses': dict(common, **{
                '200': {'description': 'schedules', 'content': _json({
                    'type': 'object', 'properties': {
                        'schedules': {'type': 'array', 'items': _ref('Schedule')}}})}})},
            'post': {'summary': 'create a schedule', 'requestBody': json_body,
                     'responses': dict(common, **{
                         '201': schedule_ok, '400': bad, '409': conflict,
                         '413': too_large, '415': not_json})}},
        '/api/schedules/{name}': {
            'parameters': [name_param],
            'get': {'summary': 'one schedule', 'responses': dict(
                common, **{'200': schedule_ok, '404': not_found})},
            'put': {'summary': 'change a schedule', 'requestBody': json_body,
                    'responses': dict(common, **{
                        '200': schedule_ok, '400': bad, '404': not_found, '409': conflict,
                        '413': too_large, '415': not_json})},
            'delete': {'summary': 'delete a schedule', 'responses': dict(common, **{
                '204': {'description': 'deleted'}, '404': not_found, '409': conflict})}},
    }
    for action in ('pause', 'resume'):
        paths['/api/schedules/{name}/%s' % action] = {'post': {
            'summary': '%s a schedule' % action, 'parameters': [name_param],
            'responses': dict(common, **{'200': schedule_ok, '404': not_found,
                                         '409': conflict})}}
    paths['/api/schedules/{name}/run'] = {'post': {
        'summary': 'send now (a test send)', 'parameters': [name_param],
        'responses': dict(common, **{
            '202': {'description': 'queued', 'content': _json(_ref('Accepted'))},
            '400': bad, '404': not_found})}}
    paths['/api/schedule-preview'] = {'post': {
        'summary': "a schedule's next slot and the values its relative dates take then",
        'requestBody': {'required': True, 'content': _json(_ref('PreviewInput'))},
        'responses': dict(common, **{
            '200': {'description': 'the next slot and its parameter values',
                    'content': _json({'type': 'object',
                                      'required': ['slot_at', 'params', 'asked']})},
            '400': bad, '404': _error('no such report'), '413': too_large,
            '415': not_json})}}
    paths['/api/schedules/{name}/test'] = {'post': {
        'summary': "send a test of the schedule's next slot to one address",
        'parameters': [name_param],
        'requestBody': {'required': True, 'content': _json({
            'type': 'object', 'required': ['to'], 'additionalProperties': False,
            'properties': {'to': {'type': 'string', 'format': 'email'}}})},
        'responses': dict(common, **{
            '202': {'description': 'queued', 'content': _json(_ref('Accepted'))},
            '400': bad, '404': not_found, '409': conflict})}}
    paths['/api/messages/preview'] = {'post': {
        'summary': 'the next message as templates would make it (sample values, the date '
                   'of the next slot of `cron` in `timezone`, or today)',
        'requestBody': {'required': True, 'content': _json({'type': 'object', 'properties': dict(
            report={'type': 'string'}, params={'type': 'object'}, cron={'type': 'string'},
            timezone={'type': 'string'}, **_message_properties())})},
        'responses': dict(common, **{
            '200': {'description': 'subject, body, attachment_name, send_rule, date',
                    'content': _json({'type': 'object'})},
            '400': bad, '404': _error('no such report'), '413': too_large,
            '415': not_json})}}
    paths['/api/notifications'] = {'get': {
        'summary': 'the notification log: operator emails and webhook POSTs, newest first',
        'parameters': [
            {'name': 'status', 'in': 'query', 'schema': _enum(SendStatus)},
            _LIMIT],
        'responses': dict(common, **{
            '200': {'description': 'notifications', 'content': _json({
                'type': 'object', 'required': ['notifications'],
                'properties': {'notifications': {'type': 'array',
                                                 'items': {'type': 'object'}}}})},
            '400': bad})}}
    paths['/api/runs/{id}/file'] = {'get': {
        'summary': "a finished run's file, while it is kept",
        'parameters': [
            {'name': 'id', 'in': 'path', 'required': True, 'schema': {'type': 'integer'}}],
        'responses': dict(common, **{'200': file_ok,
                                     '404': _error('no such run'),
                                     '409': _error('the run has no file yet'),
                                     '410': _error('the file is past retention')})}}
    paths['/files/{id}'] = {'get': {
        'summary': 'a report file, by the signed link from its email', 'security': [],
        'parameters': [
            {'name': 'id', 'in': 'path', 'required': True, 'schema': {'type': 'integer'}},
            {'name': 'expires', 'in': 'query', 'required': True, 'schema': {'type': 'string'}},
            {'name': 'sig', 'in': 'query', 'required': True, 'schema': {'type': 'string'}}],
        'responses': {'200': file_ok,
                      '403': _error('not valid or expired'), '404': _error('no longer kept')}}}
    id_param = {'name': 'id', 'in': 'path', 'required': True, 'schema': {'type': 'integer'}}
    paths['/api/runs/{id}/cancel'] = {'post': {
        'summary': 'cancel a queued or running run before its mail goes out',
        'parameters': [id_param], 'responses': dict(common, **{
            '200': {'description': 'the cancelled run', 'content': _json(_ref('Run'))},
            '404': _error('no such run'),
            '409': _error('the run is over, or sending its mail')})}}
    paths['/api/runs/{id}/rerun'] = {'post': {
        'summary': 'a failed or cancelled run again, as a new run (rerun_of)',
        'parameters': [id_param], 'responses': dict(common, **{
            '202': {'description': 'queued', 'content': _json(_ref('Accepted'))},
            '400': bad, '404': _error('no such run'),
            '409': _error('the run is not failed or cancelled')})}}
    paths['/api/schedules/{name}/backfill'] = {'post': {
        'summary': "one run per past slot of the schedule in a range of days",
        'parameters': [name_param], 'requestBody': {'required': True, 'content': _json({
            'type': 'object', 'required': ['from', 'to'],
            'properties': {'from': {'type': 'string'}, 'to': {'type': 'string'}}})},
        'responses': dict(common, **{
            '200': {'description': 'the runs created and the slots skipped, with why',
                    'content': _json({'type': 'object',
                                      'required': ['created', 'skipped']})},
            '400': bad, '404': not_found, '413': too_large, '415': not_json})}}
    for report in registry:
        parameters = [{'name': p.name, 'in': 'query', 'required': p.required,
                       'description': p.help, 'schema': _param_schema(p)}
                      for p in report.params]
        parameters += [{'name': option, 'in': 'query', 'schema': {'type': 'boolean'}}
                       for option in ('escape_formulas', 'bom')]
        paths['/reports/%s.csv' % report.name] = {'get': {
            'summary': report.title, 'description': report.description,
            'parameters': parameters,
            'responses': dict(common, **{
                '200': {'description': 'the report, streamed',
                        'content': {'text/csv': {'schema': {'type': 'string'}}}},
                '400': bad})}}
        for fmt in (FileFormat.CSV_GZ, FileFormat.XLSX):
            paths['/reports/%s%s' % (report.name, EXTENSIONS[fmt])] = {'get': {
                'summary': '%s (%s)' % (report.title, fmt), 'description': report.description,
                'parameters': parameters,
                'responses': dict(common, **{
                    '200': {'description': 'the report as %s' % fmt, 'content': {
                        CONTENT_TYPES[fmt]: {'schema': {'type': 'string', 'format': 'binary'}}}},
                    '400': bad})}}
        paths['/api/reports/%s/check' % report.name] = {'get': {
            'summary': 'check download parameters without running the report',
            'parameters': parameters + [{'name': 'format', 'in': 'query',
                                         'schema': _enum(FileFormat)}],
            'responses': dict(common, **{
                '200': {'description': 'the parameters are valid; `url` downloads',
                        'content': _json({'type': 'object',
                                          'required': ['report', 'params', 'url']})},
                '400': bad})}}
    return {
        'openapi': '3.0.3',
        'info': {'title': 'Nightshift', 'version': '1.0',
                 'description': 'CSV reports: streamed downloads, emailed runs, schedules.'},
        'security': [{'bearer': []}, {'basic': []}],
        'paths': paths,
        'components': _components([r.name for r in registry]),
    }
