"""The sender's message: subject, body and attachment name as templates.

Templates are Jinja2 text rendered in an immutable sandbox with no globals
(no `range`, `lipsum`, `cycler`, `namespace`...), no loader (no include,
import or extends), a short list of filters, and strict undefined names. A
template is checked when it is saved: it must parse, use only the names
listed in VARIABLES, never name an attribute starting with `_`, and render
with sample values. What gets past that and still breaks the sandbox at send
time raises TemplateFailure, and the run fails saying so.

Rendered values are text, never HTML: the message has a plain-text body only.
A subject is one line (every line break and control character becomes a
space); an attachment name is a file name (no path, no quote, the real
extension always kept).
"""
import datetime
import functools
import operator
import re
import threading
import unicodedata

from jinja2 import StrictUndefined, nodes
from jinja2 import filters as jinja_filters
from jinja2 import meta
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from errors import InputError, PermanentFailure

FIELDS = ('subject', 'body', 'attachment_name')
MAX_LENGTH = {'subject': 1000, 'body': 20000, 'attachment_name': 300}
# Longest rendered text: a subject stays one sane header line.
MAX_OUTPUT = {'subject': 500, 'body': 100000, 'attachment_name': 120}

# The defaults give what Nightshift always sent.
DEFAULTS = {
    'subject': 'Nightshift: {{ title }} report ({{ rows_text }} rows{{ ", cut" if cut }})',
    'body': ('{{ title }} report\n'
             '\n'
             'Parameters: {{ parameters }}\n'
             'Rows: {{ rows_text }}\n'
             '{% if cut %}{{ cut_note }}\n{% endif %}'
             'Size: {{ size }}\n'
             'Took: {{ took }}\n'
             '{{ file_note }}\n'
             '\n'
             'Run #{{ run_id }}, sent by Nightshift.'),
    'attachment_name': '{{ report }}-{{ stamp }}',
}

# What each template may use, with what it means (the README lists these).
COMMON = {
    'title': "the report's title",
    'report': "the report's name",
    'params': 'the parameter values the run used, e.g. {{ params.since }}',
    'parameters': 'the same as text: "since=2026-01-01, status=paid", or "none"',
    'window': 'what the run covers, for a notice: the parameters, or "all rows"',
    'date': "the slot's date in the schedule's timezone (today's for other runs), "
            "e.g. {{ date }} or {{ date.strftime('%d %b %Y') }}",
    'stamp': 'when the run was made, UTC, as 20260101-070000',
    'rows': 'the number of rows (a number)',
    'rows_text': 'the same written 1,234',
    'size': 'the file size, e.g. 12.3 KB',
    'cut': 'true when the report was cut at max_rows',
    'run_id': "the run's number",
}
MESSAGE_ONLY = {
    'took': 'how long the file took to make, e.g. 1.2 s',
    'file_name': "the attachment's name",
    'file_note': 'the line about the file: attached, zipped, or the download link',
    'link': 'the download link when the file is too large to attach, else empty',
    'link_expires': 'when that link stops working (UTC)',
    'cut_note': 'the sentence saying the report was cut, when it was',
}
VARIABLES = {
    'subject': dict(COMMON, **MESSAGE_ONLY),
    'body': dict(COMMON, **MESSAGE_ONLY),
    'attachment_name': dict(COMMON),
}

# Arguments and results larger than this are refused: a template must not
# be a way to make the worker build a gigabyte string.
MAX_NUMBER = 100000
MAX_SEQUENCE = 100000


class TemplateFailure(PermanentFailure):
    """A template could not be rendered: at send time the run fails, saying
    which template and why (trying again would fail the same way)."""

    def __init__(self, field, message):
        super().__init__('%s template: %s' % (field, message))
        self.field = field
        self.message = message


# Work one rendering may do, counted in loop steps and characters made: a
# template cannot keep a worker (or the web server checking it) busy.
WORK_BUDGET = 5000000
_budget = threading.local()


def _spend(units):
    left = getattr(_budget, 'left', None)
    if left is None:
        return
    _budget.left = left - units
    if _budget.left < 0:
        raise SecurityError('the template does too much work (over %d steps)' % WORK_BUDGET)


def _made(value):
    """`value`, once it is known not to be over-long; its size is spent."""
    if isinstance(value, (str, list, tuple)):
        if len(value) > MAX_SEQUENCE:
            raise SecurityError('a value longer than %d is not made here' % MAX_SEQUENCE)
        _spend(len(value))
    return value


def _steps(iterable):
    """A loop's items, each one a step of the budget."""
    for item in iterable:
        _spend(100)
        yield item


def _check_args(args):
    for value in args:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_NUMBER:
            raise SecurityError('numbers above %d are not accepted here' % MAX_NUMBER)


def _capped(function):
    @functools.wraps(function)  # keeps Jinja's pass_environment mark
    def wrapper(*args, **kwargs):
        _check_args(args[1:] if args else ())
        _check_args(kwargs.values())
        return _made(function(*args, **kwargs))
    return wrapper


def _replace(value, old, new, count=None):
    """Jinja's replace, refusing before it builds a result over the cap."""
    value, old, new = str(value), str(old), str(new)
    times = value.count(old) if old else len(value) + 1
    if count is not None:
        times = min(times, count)
    if len(value) + times * (len(new) - len(old)) > MAX_SEQUENCE:
        raise SecurityError('a value longer than %d is not made here' % MAX_SEQUENCE)
    return _made(value.replace(old, new, -1 if count is None else count))


def _join(value, separator=''):
    """Jinja's join, refusing before it builds a result over the cap."""
    items = []
    total = 0
    for item in value:
        items.append(str(item))
        total += len(items[-1]) + len(str(separator))
        if total > MAX_SEQUENCE:
            raise SecurityError('a value longer than %d is not made here' % MAX_SEQUENCE)
    return _made(str(separator).join(items))


# Methods a template may call, by the kind of value: reading and formatting
# text, dates and the parameters. Any other method is refused.
SAFE_METHODS = (
    (str, frozenset(['upper', 'lower', 'title', 'capitalize', 'strip', 'lstrip', 'rstrip',
                     'startswith', 'endswith', 'format', 'split', 'count', 'find', 'isdigit',
                     'isalpha', 'isspace'])),
    (datetime.date, frozenset(['strftime', 'isoformat', 'weekday', 'isoweekday'])),
    (dict, frozenset(['get'])),
)
METHOD_NAMES = frozenset().union(*(names for _, names in SAFE_METHODS))

# Filters that only shape text and numbers; each capped.
ALLOWED_FILTERS = ('abs', 'capitalize', 'default', 'd', 'first', 'float', 'int', 'join',
                   'last', 'length', 'lower', 'replace', 'round', 'sort', 'string', 'title',
                   'trim', 'truncate', 'upper', 'dictsort', 'items', 'list', 'reverse',
                   'wordcount', 'count', 'min', 'max', 'sum', 'unique')
ALLOWED_TESTS = ('defined', 'undefined', 'none', 'number', 'string', 'even', 'odd',
                 'divisibleby', 'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'in', 'true', 'false',
                 'sameas', 'mapping', 'sequence', 'iterable', 'boolean', 'integer', 'float',
                 'lower', 'upper', '==', '!=', '<', '<=', '>', '>=')


class _Metered(CodeGenerator):
    """`a ~ b` joins through the environment, which refuses an over-long
    result: a chain of `{% set s = s ~ s %}` cannot double its way to
    gigabytes."""

    def visit_Concat(self, node, frame):
        self.write('environment.concat((')
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(', ')
        self.write('))')


class MessageSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with arithmetic that cannot grow without
    bound and calls whose numbers stay small."""
    intercepted_binops = frozenset(['*', '**', '%', '+'])
    code_generator_class = _Metered

    def concat(self, values):
        parts = [str(value) for value in values]
        if sum(len(part) for part in parts) > MAX_SEQUENCE:
            raise SecurityError('a value longer than %d is not made here' % MAX_SEQUENCE)
        return _made(''.join(parts))


    def call_binop(self, context, op, left, right):
        if op == '**':
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError('powers above 64 are not computed here')
            return operator.pow(left, right)
        if op == '%':
            if isinstance(left, str):
                raise SecurityError("'%' formatting is not available; use the values directly")
            return operator.mod(left, right)
        if op == '*':
            for one, other in ((left, right), (right, left)):
                if isinstance(one, (str, list, tuple)) and isinstance(other, int) \
                        and len(one) * other > MAX_SEQUENCE:
                    raise SecurityError('a value longer than %d is not made here'
                                        % MAX_SEQUENCE)
            return _made(operator.mul(left, right))
        return _made(operator.add(left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        _check_args(args)
        _check_args(kwargs.values())
        _spend(100)
        return _made(super().call(__context, __obj, *args, **kwargs))

    def is_safe_attribute(self, obj, attr, value):
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if callable(value):
            return any(isinstance(obj, kind) and attr in names for kind, names in SAFE_METHODS)
        return True

    def wrap_str_format(self, value):
        spec = getattr(value, '__self__', None)
        if isinstance(spec, str) and re.search(r'[0-9]{4}', spec):
            raise SecurityError('format widths above 999 are not accepted here')
        return super().wrap_str_format(value)


def _environment():
    env = MessageSandbox(undefined=StrictUndefined, autoescape=False, loader=None,
                         keep_trailing_newline=False)
    env.globals.clear()
    env.filters = {name: _capped(jinja_filters.FILTERS[name]) for name in ALLOWED_FILTERS}
    env.filters.update(replace=_replace, join=_join, metered=_steps)
    env.tests = {name: test for name, test in env.tests.items() if name in ALLOWED_TESTS}
    return env


ENV = _environment()


def _refusal(ast, field, allowed, param_names):
    """Why this parsed template is refused, or None."""
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        return 'include, import and extends are not available'
    for node in ast.find_all(nodes.Name):
        if node.name in ('self', 'caller', 'varargs', 'kwargs') and node.ctx == 'load':
            return 'unknown variable %r' % node.name
        if node.name.startswith('_'):
            return 'names starting with _ are not available'
    called = set()
    for node in ast.find_all(nodes.Call):
        if isinstance(node.node, nodes.Getattr):
            if node.node.attr not in METHOD_NAMES:
                return 'method %r is not available; methods that are: %s' % (
                    node.node.attr, ', '.join(sorted(METHOD_NAMES)))
            called.add(id(node.node))
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        key = node.attr if isinstance(node, nodes.Getattr) else (
            node.arg.value if isinstance(node.arg, nodes.Const) else None)
        if isinstance(key, str) and key.startswith('_'):
            return 'attributes starting with _ are not available (%r)' % key
        if isinstance(node.node, nodes.Name) and node.node.name == 'params' \
                and isinstance(key, str) and param_names is not None \
                and id(node) not in called \
                and key not in param_names:
            return 'the report has no parameter %r (it has: %s)' % (
                key, ', '.join(sorted(param_names)) or 'none')
    try:
        unknown = sorted(meta.find_undeclared_variables(ast) - set(allowed))
    except Exception as exc:  # an unknown filter or test, found while compiling
        return getattr(exc, 'message', None) or str(exc)
    if unknown:
        return 'unknown variable %r; available: %s' % (unknown[0], ', '.join(sorted(allowed)))
    return None


def compile_template(field, source, param_names=None):
    """The compiled template, or InputError naming `field` and what is wrong."""
    if not isinstance(source, str):
        raise InputError(field, 'must be a text template (or null for the default)')
    if len(source) > MAX_LENGTH[field]:
        raise InputError(field, 'longer than %d characters' % MAX_LENGTH[field])
    try:
        ast = ENV.parse(source)
    except Exception as exc:  # Jinja's syntax errors and assertions alike
        line = getattr(exc, 'lineno', None)
        raise InputError(field, 'template error%s: %s'
                         % (' on line %d' % line if line else '', getattr(exc, 'message', exc)),
                         code='bad_template')
    why = _refusal(ast, field, VARIABLES[field], param_names)
    if why:
        raise InputError(field, why, code='bad_template')
    # Every loop walks its items through `metered`: each step is counted.
    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, 'metered', [], [], None, None, lineno=loop.lineno)
    try:
        return ENV.from_string(ast)
    except Exception as exc:
        raise InputError(field, 'template error: %s' % getattr(exc, 'message', exc),
                         code='bad_template')


@functools.lru_cache(maxsize=256)
def _compiled(field, source):
    # Parsing, checking and compiling cost ~5 ms: a burst mails the same
    # templates hundreds of times. A compiled template renders on any thread.
    return compile_template(field, source)


def render(field, source, context):
    """The rendered text, cleaned for where it goes; TemplateFailure when the
    template cannot be rendered (a sandbox refusal, an unknown value).

    A template's text depends only on the values it names, and the sandbox
    gives it nothing else (no globals, pure filters): the runs of a batch
    render one subject, and often one file name, with the same values, so
    the text is kept by those values (never a failure: that is raised
    again each time)."""
    try:
        key = (field, source, tuple((name, type(context[name]).__name__, repr(context[name]))
                                    for name in _names_used(field, source) if name in context))
    except Exception:  # it does not parse: _render says so
        return _render(field, source, context)
    with _kept_lock:
        text = _kept.get(key)
    if text is None:
        text = _render(field, source, context)
        with _kept_lock:
            _kept[key] = text
            while len(_kept) > KEPT_TEXTS:
                del _kept[next(iter(_kept))]  # the oldest
    return text


# Rendered texts kept (render), the last ones made.
KEPT_TEXTS = 64
_kept = {}
_kept_lock = threading.Lock()


@functools.lru_cache(maxsize=64)
def _names_used(field, source):
    # The context's names the template reads.
    return tuple(sorted(meta.find_undeclared_variables(ENV.parse(source))
                        & set(VARIABLES[field])))


def _render(field, source, context):
    _budget.left = WORK_BUDGET
    try:
        template = _compiled(field, source)
        parts, size = [], 0
        # Streamed, so that a loop cannot pile up more than the limit.
        for part in template.generate(**{k: context[k] for k in VARIABLES[field]
                                         if k in context}):
            size += len(part)
            if size > MAX_OUTPUT['body']:
                raise SecurityError('renders to more than %d characters' % MAX_OUTPUT['body'])
            parts.append(part)
        text = ''.join(parts)
    except InputError as exc:
        raise TemplateFailure(field, exc.message)
    except SecurityError as exc:
        raise TemplateFailure(field, 'refused by the sandbox: %s' % exc)
    except Exception as exc:  # the user's template: any error is its own
        raise TemplateFailure(field, '%s: %s' % (type(exc).__name__, exc))
    finally:
        _budget.left = None
    if len(text) > MAX_OUTPUT[field]:
        if field != 'body':
            text = text[:MAX_OUTPUT[field]]
        else:
            raise TemplateFailure(field, 'renders to more than %d characters'
                                  % MAX_OUTPUT[field])
    if field == 'subject':
        return one_line(text)
    if field == 'body':
        return text.replace('\r\n', '\n').replace('\r', '\n')
    return text


_CONTROL = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029]')


def one_line(text):
    """A header value: no line break or control character can survive, so
    no value can start a header of its own."""
    return ' '.join(_CONTROL.sub(' ', text).split())


_UNSAFE_NAME = re.compile(r'[^A-Za-z0-9 ._()+,=@-]')


def safe_file_name(text, extension, fallback):
    """A plain ASCII file name ending in `extension`: accents are dropped
    (Relatório -> Relatorio), path separators, quotes and anything else
    become _, no leading dot; empty gives `fallback`."""
    text = unicodedata.normalize('NFKD', text).encode('ascii', 'ignore').decode('ascii')
    text = _UNSAFE_NAME.sub('_', one_line(text)).strip(' .')
    if extension and text.lower().endswith(extension.lower()):
        text = text[:-len(extension)].rstrip(' .')
    text = text[:MAX_OUTPUT['attachment_name']]
    return (text or fallback) + extension


def check_templates(data, params, title='Report', report='report'):
    """The stored form of the template fields present in `data`: a template
    text, or None for the default. Each is rendered once with sample values
    and `params` (the values the run or schedule has). InputError names the
    bad field."""
    cleaned = {}
    for field in FIELDS:
        if field not in data:
            continue
        source = data[field]
        if source is None or (isinstance(source, str) and not source.strip()):
            cleaned[field] = None
            continue
        compile_template(field, source, set(params))
        try:
            render(field, source, sample_context(params, title=title, report=report))
        except TemplateFailure as exc:
            raise InputError(field, exc.message, code='bad_template')
        cleaned[field] = source
    return cleaned


def params_text(params):
    return ', '.join('%s=%s' % (k, v) for k, v in sorted(params.items())
                     if v not in (None, '')) or 'none'


def base_context(*, title, report, params, date, stamp, rows, size, cut, run_id):
    text = params_text(params)
    return {
        'title': title, 'report': report, 'params': dict(params), 'parameters': text,
        'window': text if text != 'none' else 'all rows', 'date': date, 'stamp': stamp,
        'rows': rows, 'rows_text': '{:,}'.format(rows), 'size': size, 'cut': bool(cut),
        'run_id': run_id,
    }


def sample_context(params, date=None, title='Orders', report='orders', run_id=123):
    """Values to check and preview templates with."""
    context = base_context(title=title, report=report, params=params,
                           date=date or datetime.date.today(), stamp='20260101-070000',
                           rows=1234, size='56.7 KB', cut=False, run_id=run_id)
    context.update(took='1.2 s', file_name='%s-20260101-070000.csv' % report,
                   file_note='File: %s-20260101-070000.csv, attached' % report,
                   link=None, link_expires=None, cut_note='')
    return context
