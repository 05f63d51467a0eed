"""What a request gives the API: its JSON body, its query string, a flag.
Each mistake is an ApiError naming the field."""
import json
import re

from bottle import request

from errors import BodyTooLarge, InputError, UnsupportedMediaType
from guards import bearer_given, is_json_request

# ASCII digits only: str.isdigit() also takes "²", which int() refuses.
WHOLE_NUMBER = re.compile(r'[0-9]{1,18}\Z')
# A header a link cannot carry: a page on another site cannot make a browser
# send it without a preflight this server never grants.
RAW_HEADER = 'X-Nightshift-Raw'
# Output switches a request may give beside the report's own parameters.
OUTPUT_OPTIONS = ('escape_formulas', 'bom')


def read_json_body(max_bytes):
    # Only JSON: a browser cannot send that type to another site without a
    # preflight this server never grants, so a forged form post cannot write.
    if not is_json_request():
        raise UnsupportedMediaType('send the body as application/json', 'Content-Type')
    too_large = BodyTooLarge('request body over %d bytes' % max_bytes, 'body')
    if request.content_length > max_bytes:
        raise too_large
    raw = request.body.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise too_large
    try:
        data = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise InputError('body', 'the body must be a JSON object', code='invalid_json')
    return data


def raw_allowed():
    """May this download turn formula escaping off? Only when the request
    carries what a crafted link in a mail or a chat cannot."""
    return request.get_header(RAW_HEADER, '').strip() == '1' or bearer_given()


def flag(value, field):
    """A boolean from JSON (true/false) or a query string (true/false/1/0)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ('true', '1', 'false', '0'):
        return value.lower() in ('true', '1')
    raise InputError(field, 'must be true or false')


def query_params(prefix=''):
    """The query string as {name: str}; a repeated name or bytes that are not
    UTF-8 are an error naming `prefix + name` (never a filter dropped)."""
    params = {}
    for raw_name in request.query.keys():
        values = request.query.getall(raw_name)
        try:
            name = raw_name.encode('latin-1').decode('utf-8')
        except UnicodeError:
            raise InputError('query', 'a parameter name is not valid UTF-8')
        field = name if name in OUTPUT_OPTIONS else prefix + name
        if len(values) > 1:
            raise InputError(field, 'given more than once')
        value = request.query.getunicode(raw_name)
        if value is None:
            raise InputError(field, 'is not valid UTF-8')
        params[name] = value
    return params
