"""The report catalogue: SQL files from the folders the settings name, and
Python reports from a module the settings name, behind one registry that
the API, the page, runs and schedules all use.

A report file that cannot be read does not take the others down: it is
listed with its error (`broken`) and cannot be run. Files added or changed
while web and workers run are picked up at the next use (folders are looked
at again at most once a second).
"""
import glob
import importlib
import logging
import os
import threading
import time
from typing import Any

from peewee import MySQLDatabase, PostgresqlDatabase, SqliteDatabase

import sqlfiles
from errors import InputError, UnknownReportError
from params import Param, parse_params

logger = logging.getLogger('nightshift.reports')


class UnknownReport(LookupError):
    pass


class BrokenReport(LookupError):
    """The report's file has an error: it is listed, but cannot run."""

    def __init__(self, name, error):
        super().__init__('%s: %s' % (name, error))
        self.name, self.error = name, error


class Report:
    """One report, from a file or from Python: what it is called, what it
    takes, which source it reads, and its statement for an engine."""

    def __init__(self, name, title, params=(), description='', source='default',
                 timeout=None, escape_formulas=True, path=None, kind='python'):
        self.name = name
        self.title = title
        self.params = tuple(params)
        self.description = description
        self.source = source
        self.timeout = timeout
        # False for a report whose text is meant to be formulas, or is read by
        # programs, not spreadsheets; a request can still choose either way.
        self.escape_formulas = escape_formulas
        self.path = path
        self.kind = kind

    def parse(self, raw):
        """Raw values -> typed values, or InputError naming the field."""
        typed = parse_params(self.params, raw)
        for param in self.params:
            later = getattr(param, 'after', None)
            if later and typed.get(param.name) is not None and typed.get(later) is not None \
                    and typed[param.name] <= typed[later]:
                raise InputError('params.%s' % param.name, 'must be after %s' % later)
        return typed

    def statement(self, engine, typed):
        """(sql, parameters) for the source's driver."""
        raise NotImplementedError

    def describe(self):
        return {'name': self.name, 'title': self.title, 'description': self.description,
                'source': self.source, 'kind': self.kind,
                'params': [p.describe() for p in self.params]}


class FileReport(Report):
    def __init__(self, parsed):
        super().__init__(parsed.name, parsed.title, parsed.params, parsed.description,
                         parsed.source, parsed.timeout, parsed.escape_formulas,
                         path=parsed.path, kind='sql')
        self.parsed = parsed

    def statement(self, engine, typed):
        return sqlfiles.bind(self.parsed, engine, typed)


# Unconnected databases that only turn a Peewee query into each engine's SQL.
_COMPILERS = {'postgres': PostgresqlDatabase(None), 'mysql': MySQLDatabase(None),
              'sqlite': SqliteDatabase(None)}


class PythonReport(Report):
    """A function returning its query: SQL text with :name placeholders (the
    same rules as a report file), or a Peewee query."""

    def __init__(self, build, **kwargs):
        super().__init__(**kwargs)
        self.build = build

    def statement(self, engine, typed):
        query = self.build(**typed)
        if isinstance(query, str):
            parsed = sqlfiles.query_report(self.name, query, self.params,
                                           where=self.path or self.name)
            return sqlfiles.bind(parsed, engine, typed)
        context = _COMPILERS[engine].get_sql_context()
        return context.sql(query).query()


class Registry:
    """Reports by name. `report` registers a Python one (a decorator)."""

    def __init__(self):
        self._reports = {}
        self._broken = {}

    def report(self, name, title, params=(), description=None, source='default',
               timeout=None, escape_formulas=True):
        """Decorator: register a function returning the report's query.

        The function takes the typed parameters as keyword arguments and
        returns SQL text with :name placeholders, or a Peewee query.
        """
        def decorator(build):
            if name in self._reports:
                raise ValueError('report %r is defined twice' % name)
            reserved = {p.name for p in params} & set(sqlfiles.RESERVED_PARAMS)
            if reserved:
                raise ValueError('report %r: parameter names %s are reserved for output '
                                 'options' % (name, ', '.join(sorted(reserved))))
            doc = description if description is not None else (build.__doc__ or '')
            self._reports[name] = PythonReport(
                build, name=name, title=title, params=params, description=' '.join(doc.split()),
                source=source, timeout=timeout, escape_formulas=escape_formulas,
                path=getattr(build, '__module__', None))
            return build
        return decorator

    def get(self, name):
        self.refresh()
        if isinstance(name, str) and name in self._broken:
            raise BrokenReport(name, self._broken[name])
        try:
            return self._reports[name]
        except (KeyError, TypeError):
            raise UnknownReport(name)

    def __iter__(self):
        self.refresh()
        return iter(sorted(self._reports.values(), key=lambda r: r.name))

    @property
    def broken(self):
        """{name: ReportFileError} of the files that cannot be used."""
        self.refresh()
        return dict(self._broken)

    def refresh(self):
        pass


class Catalogue(Registry):
    """The reports a deployment has: every `.sql` file in `folders` and the
    Python reports of `modules` (registered on this catalogue's `report`)."""

    def __init__(self, folders=(), modules=(), every=1.0, clock=time.monotonic):
        super().__init__()
        self.folders = tuple(folders)
        self.every = every
        self.clock = clock
        self._python = {}
        self._module_errors = {}
        self._seen = None
        self._checked = None
        self._lock = threading.Lock()
        for module in modules:
            self._load_module(module)
        self._python = dict(self._reports)
        self.refresh(force=True)

    def _load_module(self, name):
        """Import a module of Python reports; one that fails to import is
        listed as broken (under its module name) and the others still load."""
        global _loading
        _loading = self
        try:
            importlib.import_module(name)
        except Exception as exc:
            logger.exception('python_reports module %s cannot be imported', name)
            self._module_errors[name] = sqlfiles.ReportFileError(
                name, getattr(exc, 'lineno', None) or 1,
                'cannot be imported: %s: %s' % (type(exc).__name__, exc))
        finally:
            _loading = None

    def _files(self):
        found = {}
        for folder in self.folders:
            for path in sorted(glob.glob(os.path.join(folder, '*.sql'))):
                try:
                    found[path] = os.stat(path).st_mtime_ns
                except FileNotFoundError:
                    continue
        return found

    def refresh(self, force=False):
        """Read the folders again if anything in them changed."""
        now = self.clock()
        if not force and self._checked is not None and now - self._checked < self.every:
            return
        with self._lock:
            self._checked = now
            files = self._files()
            if files == self._seen:
                return
            reports, broken = dict(self._python), dict(self._module_errors)
            for path in files:
                name = os.path.splitext(os.path.basename(path))[0]
                try:
                    parsed = sqlfiles.read_report_file(path)
                except sqlfiles.ReportFileError as exc:
                    broken[name] = exc
                    continue
                if name in reports:
                    broken[name] = sqlfiles.ReportFileError(
                        path, 1, 'a report named %r exists already (%s)'
                        % (name, reports[name].path))
                    continue
                reports[name] = FileReport(parsed)
            for name, error in broken.items():
                if self._seen is None or name not in self._broken or \
                        str(self._broken[name]) != str(error):
                    logger.error('report file cannot be used: %s', error)
            self._reports, self._broken, self._seen = reports, broken, files


_loading = None


def find_report(registry: Registry, name: Any) -> Report:
    """The report a request names, or InputError on field `report`."""
    if not isinstance(name, str) or not name:
        raise InputError('report', 'give the name of a report', code='required')
    try:
        return registry.get(name)
    except UnknownReport:
        raise UnknownReportError(name)
    except BrokenReport as exc:
        raise InputError('report', 'report %s cannot be used until its file is fixed: %s'
                         % (name, exc.error), code='broken_report')


def report(name, title, params=(), description=None, source='default', timeout=None,
           escape_formulas=True):
    """For a module of Python reports named in the settings (python_reports):

        from reports import report
        from params import Param

        @report('big_spenders', 'Big spenders', source='shop',
                params=[Param('min_total', 'decimal', required=True)])
        def big_spenders(min_total):
            return 'SELECT id, name FROM customer WHERE total >= :min_total'
    """
    if _loading is None:
        raise RuntimeError('reports.report registers into the catalogue that loads this '
                           'module; name the module in the python_reports setting')
    return _loading.report(name, title, params, description, source, timeout,
                           escape_formulas)


def create_catalogue(settings) -> Catalogue:
    modules = [m.strip() for m in settings.python_reports.split(',') if m.strip()]
    return Catalogue(settings.report_folders, modules)


__all__ = ['Catalogue', 'Registry', 'Report', 'UnknownReport', 'BrokenReport', 'Param',
           'create_catalogue', 'report']
