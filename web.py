"""The page at `/`: reports to download or email, recent runs, schedules,
charts, and (in development) the outbox.

Server-rendered with Bottle's SimpleTemplate. The tables are HTML fragments
the page's script fetches again while runs are moving, so there is one
renderer for each table, here, and the script stays small. Every write
goes through the JSON API, with its validation and its field names.
"""
import functools
import json
import os
import zoneinfo

from bottle import HTTPResponse, static_file, template
from peewee import DatabaseError, InterfaceError

import charts
import health
import outbox
import reldates
import runviews
import schedules
from mail import human_size
from models import Run, Schedule, db, utcnow
from reports import BrokenReport, UnknownReport
from vocab import FINAL, TERMINAL, RunStatus

HERE = os.path.dirname(os.path.abspath(__file__))
VIEWS = os.path.join(HERE, 'views')
STATIC = os.path.join(HERE, 'static')
RECENT_RUNS = 25
CHART_RUNS = 30

render = functools.partial(template, template_lookup=[VIEWS])


@functools.lru_cache(maxsize=1)
def timezone_names():
    # Read from disk once, at the first page view rather than at import.
    return sorted(zoneinfo.available_timezones())


# --- formatting shared by the templates ---------------------------------

def ago(moment, now):
    """'3 min ago' / 'in 2 h 5 min' for a naive UTC time."""
    if moment is None:
        return ''
    seconds = (moment - now).total_seconds()
    text = _span(abs(seconds))
    return 'in %s' % text if seconds > 0 else '%s ago' % text


def _span(seconds):
    if seconds < 60:
        return '%d s' % seconds
    minutes = int(seconds // 60)
    if minutes < 60:
        return '%d min' % minutes
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return '%d h %d min' % (hours, minutes) if minutes else '%d h' % hours
    return '%d days' % (hours // 24)


def utc_text(moment):
    return moment.strftime('%Y-%m-%d %H:%M UTC') if moment else ''


def iso(moment):
    return moment.isoformat() + 'Z' if moment else ''


def run_duration(run, now):
    """Seconds the run took, or has taken so far while it is running."""
    if run.started_at is None:
        return None
    end = run.finished_at or (now if run.status == RunStatus.RUNNING else None)
    return (end - run.started_at).total_seconds() if end else None


def next_run_text(row, now):
    """'Wed 25 Nov 2026, 02:30 (in 4 h 32 min)' in the schedule's own timezone."""
    local = row['next_local']
    if local is None:
        return ''
    return '%s (%s)' % (local.strftime('%a %d %b %Y, %H:%M'), ago(row['next_utc'], now))


HELPERS = dict(next_run_text=next_run_text, human_size=human_size, ago=ago, utc_text=utc_text,
               iso=iso, seconds_text=charts.seconds_text, run_duration=run_duration,
               file_ready=runviews.file_ready, describe_params=reldates.describe,
               # The page's script reads which statuses are final from here.
               final_statuses=' '.join(FINAL), RunStatus=RunStatus)


# --- what the pages show --------------------------------------------------

def recent_runs(limit=RECENT_RUNS):
    return list(Run.select().order_by(Run.id.desc()).limit(limit))


def chart_for(report):
    finished = (Run.select().where(Run.report == report.name, Run.status.in_(TERMINAL))
                .order_by(Run.id.desc()).limit(CHART_RUNS))
    return charts.run_chart(report, list(reversed(list(finished))))


def schedule_rows(now):
    rows = []
    for schedule in schedules.with_last_runs(Schedule.select().order_by(Schedule.name)):
        upcoming, local = schedules.next_run(schedule, now)
        rows.append({'schedule': schedule, 'next_utc': upcoming, 'next_local': local,
                     'last': schedules.last_run(schedule)})
    return rows


def install_pages(app, settings, jobs, registry):
    """Add the page routes to `app` (the API's app: same plugins, same auth)."""
    uses_outbox = settings.mail_backend == 'outbox'

    def page(template_name, **values):
        return render(template_name, uses_outbox=uses_outbox, **dict(HELPERS, **values))

    @app.get('/')
    def index():
        now = utcnow()
        reports = list(registry)
        try:
            return page('index', reports=reports, broken=sorted(registry.broken.items()),
                        charts={r.name: chart_for(r) for r in reports},
                        runs=recent_runs(), schedules=schedule_rows(now), now=now,
                        timezones=timezone_names(), default_timezone=settings.timezone,
                        retention_days=settings.retention_days,
                        watch=health.report(settings))
        except (InterfaceError, DatabaseError):
            # A person, not a program, is reading: say it in a page. (The API
            # answers the same with JSON.)
            db.close()
            return HTTPResponse(page('unavailable'), status=503,
                                headers={'Retry-After': '10'})

    @app.get('/ui/runs')
    def runs_fragment():
        return page('runs_rows', runs=recent_runs(), now=utcnow())

    @app.get('/ui/schedules')
    def schedules_fragment():
        now = utcnow()
        return page('schedule_rows', schedules=schedule_rows(now), now=now)

    @app.get('/ui/charts/<name>')
    def chart_fragment(name):
        try:
            report = registry.get(name)
        except (UnknownReport, BrokenReport):
            return HTTPResponse(json.dumps({'error': 'not_found', 'field': 'report',
                                            'message': 'no report named %r' % name}),
                                status=404, headers={'Content-Type': 'application/json'})
        return HTTPResponse(chart_for(report), headers={'Content-Type': 'image/svg+xml'})

    @app.get('/static/<path:path>')
    def static(path):
        return static_file(path, root=STATIC)

    def outbox_only():
        if not uses_outbox:
            return HTTPResponse(page('no_outbox'), status=404)
        return None

    @app.get('/outbox')
    def outbox_list():
        return outbox_only() or page('outbox', messages=outbox.list_messages(
            settings.outbox_dir), folder=settings.outbox_dir)

    @app.get('/outbox/<name>')
    def outbox_message(name):
        refused = outbox_only()
        if refused:
            return refused
        message = outbox.read_message(settings.outbox_dir, name)
        if message is None:
            return HTTPResponse(page('no_message', name=name), status=404)
        files = outbox.attachments(message)
        previews = {index: outbox.preview_rows(item.data)
                    for index, item in enumerate(files) if item.is_csv}
        return page('message', message=message, files=files, previews=previews)

    @app.get('/outbox/<name>/<index:int>')
    def outbox_attachment(name, index):
        refused = outbox_only()
        if refused:
            return refused
        message = outbox.read_message(settings.outbox_dir, name)
        found = outbox.attachment(message, index) if message else None
        if found is None:
            return HTTPResponse(page('no_message', name=name), status=404)
        safe = ''.join(c for c in found.filename if c.isalnum() or c in '.-_ ') or 'attachment'
        return HTTPResponse(found.data, headers={
            'Content-Type': found.content_type,
            'Content-Disposition': 'attachment; filename="%s"' % safe})

