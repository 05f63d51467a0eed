"""`GET /metrics`: Prometheus' text format, computed from the database at
scrape time.

Web and consumers are separate processes, often on separate machines: a
counter kept in one process's memory would count what that process saw.
So every value here is read from Nightshift's own tables when Prometheus
scrapes, by whichever web process it asks, and every web process answers
the same. The histograms are counted by SQL over the runs the history keeps.
"""
import datetime
import functools

from bottle import HTTPResponse, request
from peewee import MySQLDatabase, PostgresqlDatabase, SqliteDatabase, fn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

import consumers
import schedules
from errors import Unauthorized
from guards import TokenAuth
from models import Consumer, Delivery, Run, Schedule, db, db_now, quote_name, utcnow
from vocab import TERMINAL, DeliveryStatus, RunStatus

# Seconds: a report of a few seconds up to a two-hour export.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# Rows of a delivered file.
ROW_BUCKETS = (10, 100, 1000, 10000, 100000, 1000000, 10000000)


def _epoch(moment):
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def _seconds_between(database, start, end):
    """SQL for (end - start) in seconds, with the microseconds, per engine."""
    if isinstance(database, PostgresqlDatabase):
        return 'EXTRACT(EPOCH FROM (%s - %s))' % (end, start)
    if isinstance(database, MySQLDatabase):
        # 1e6, a DOUBLE: a DECIMAL division would keep four decimals.
        return 'TIMESTAMPDIFF(MICROSECOND, %s, %s) / 1e6' % (start, end)
    # SQLite keeps 'YYYY-MM-DD HH:MM:SS[.ffffff]' text; strftime('%s') rounds
    # the fraction, so whole seconds and the fraction are read apart.
    def epoch(column):
        return ("(CAST(strftime('%%s', substr(%s, 1, 19)) AS REAL) + "
                "COALESCE(CAST(substr(%s, 20) AS REAL), 0))" % (column, column))
    return '(%s - %s)' % (epoch(end), epoch(start))


class DatabaseCollector:
    """A prometheus_client collector whose every value is a query."""

    def __init__(self, settings, registry=None):
        self.settings = settings
        self.registry = registry

    def describe(self):
        # Nothing to check at registration: collect() needs the database.
        return []

    def collect(self):
        now, db_time = utcnow(), db_now()
        yield from self.runs()
        yield from self.queue(now)
        yield from self.deliveries()
        yield from self.schedules(now)
        yield from self.consumers(db_time)
        yield from self.histograms()

    def _report_names(self, found):
        names = set(found)
        if self.registry is not None:
            names.update(report.name for report in self.registry)
        return sorted(names)

    def runs(self):
        # One pass over the runs for both families: counts and bytes per
        # (report, status); the bytes are then added up per report.
        counts, written = {}, {}
        for report, status, count, size in (
                Run.select(Run.report, Run.status, fn.COUNT(Run.id), fn.SUM(Run.bytes))
                .group_by(Run.report, Run.status).tuples()):
            counts[report, status] = count
            written[report] = written.get(report, 0) + (size or 0)
        family = GaugeMetricFamily('nightshift_runs', 'Runs kept in the history, by report '
                                   'and status.', labels=['report', 'status'])
        for report in self._report_names(r for r, _ in counts):
            for status in RunStatus:
                family.add_metric([report, status.value], counts.get((report, status), 0))
        yield family
        family = GaugeMetricFamily('nightshift_export_bytes', 'Bytes of CSV written by the '
                                   'runs kept in the history (so far, for running ones), by '
                                   'report.', labels=['report'])
        for report in self._report_names(written):
            family.add_metric([report], int(written.get(report, 0)))
        yield family

    def queue(self, now):
        depth, oldest = (Run.select(fn.COUNT(Run.id), fn.MIN(Run.queued_at))
                         .where(Run.status == RunStatus.QUEUED).tuples().get())
        yield GaugeMetricFamily('nightshift_queue_depth', 'Runs queued (waiting for a worker, '
                                'or for their retry).', value=depth)
        if isinstance(oldest, str):  # MIN() over SQLite's text
            oldest = Run.queued_at.python_value(oldest)
        age = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        yield GaugeMetricFamily('nightshift_oldest_queued_run_age_seconds', 'Seconds the '
                                'oldest queued run has waited since it was queued; 0 when '
                                'none is.', value=age)

    def deliveries(self):
        counts = dict(Delivery.select(Delivery.status, fn.COUNT(Delivery.id))
                      .group_by(Delivery.status).tuples())
        family = GaugeMetricFamily('nightshift_deliveries', 'Deliveries (one per run and '
                                   'recipient) kept in the history, by outcome.',
                                   labels=['status'])
        for status in sorted(set(DeliveryStatus) | set(counts)):
            family.add_metric([str(status)], counts.get(status, 0))
        yield family

    def schedules(self, now):
        late_after = datetime.timedelta(seconds=self.settings.tick_alarm_after)
        states = {'enabled': 0, 'paused': 0, 'due': 0, 'late': 0}
        for schedule in Schedule.select():
            if not schedule.enabled:
                states['paused'] += 1
                continue
            states['enabled'] += 1
            try:
                slot = schedules.first_slot_after(schedule.cron, schedule.timezone,
                                                  schedule.checked_through)
            except ValueError:
                continue
            if slot is not None and slot <= now:
                states['due'] += 1
                if now - slot > late_after:
                    states['late'] += 1
        family = GaugeMetricFamily(
            'nightshift_schedules', 'Schedules: enabled, paused; due (a slot has come that no '
            'tick has handled yet) and late (due for longer than tick_alarm_after).',
            labels=['state'])
        for state, count in states.items():
            family.add_metric([state], count)
        yield family

    def consumers(self, db_time):
        since = consumers.live_after(self.settings, db_time)
        rows = list(Consumer.select().order_by(Consumer.id))
        labels = ['consumer', 'host', 'pid']
        up = GaugeMetricFamily('nightshift_consumer_up', '1 while the consumer beats, 0 once '
                               'it has been silent three heartbeats.', labels=labels)
        periodic = GaugeMetricFamily('nightshift_consumer_periodic', '1 if the consumer '
                                     'enqueues periodic tasks (the minute tick); 0 for '
                                     'huey_consumer -n.', labels=labels)
        workers = GaugeMetricFamily('nightshift_consumer_workers', 'Worker threads or '
                                    'processes of the consumer.', labels=labels)
        beat = GaugeMetricFamily('nightshift_consumer_last_heartbeat_timestamp_seconds',
                                 'When the consumer last said it is alive (Unix time, the '
                                 "database's clock).", labels=labels)
        tick = GaugeMetricFamily('nightshift_consumer_last_tick_timestamp_seconds',
                                 'When the minute tick last ran in the consumer (Unix time, '
                                 "the database's clock); absent before its first.",
                                 labels=labels)
        for row in rows:
            values = [str(row.id), row.host, str(row.pid)]
            up.add_metric(values, 1 if row.heartbeat_at >= since else 0)
            periodic.add_metric(values, 1 if row.periodic else 0)
            workers.add_metric(values, row.workers)
            beat.add_metric(values, _epoch(row.heartbeat_at))
            if row.last_tick_at is not None:
                tick.add_metric(values, _epoch(row.last_tick_at))
        yield GaugeMetricFamily('nightshift_consumers_live', 'Consumers beating now.',
                                value=sum(1 for row in rows if row.heartbeat_at >= since))
        yield from (up, periodic, workers, beat, tick)

    def histograms(self):
        database = db.obj
        q = functools.partial(quote_name, database=database)
        started, finished, status = q('started_at'), q('finished_at'), q('status')
        duration = _seconds_between(database, started, finished)
        statuses = [str(status) for status in TERMINAL]
        yield self._histogram(
            'nightshift_run_duration_seconds', 'Seconds from start to end of the finished '
            '(delivered or failed) runs kept in the history, by report and status; counted '
            'over the history, so it can go down when old runs are removed.',
            ['report', 'status'], duration, DURATION_BUCKETS,
            '%s IN (%s) AND %s IS NOT NULL AND %s IS NOT NULL'
            % (status, ', '.join([database.param] * len(statuses)), started, finished),
            statuses)
        # `rows` is a reserved word in MySQL: every name is quoted.
        yield self._histogram(
            'nightshift_run_rows', 'Rows of the delivered runs kept in the history, by '
            'report.', ['report'], q('rows'), ROW_BUCKETS, '%s = %s' % (status, database.param),
            [str(RunStatus.DELIVERED)])

    def _histogram(self, name, documentation, labels, value, buckets, where, params):
        database = db.obj
        columns = ', '.join(quote_name(label, database) for label in labels)
        counts = ', '.join('SUM(CASE WHEN v <= %r THEN 1 ELSE 0 END)' % bound
                           for bound in buckets)
        finished = 'SELECT %s, %s AS v FROM %s WHERE %s' % (
            columns, value, quote_name(Run._meta.table_name, database), where)
        totals = 'SELECT %s, COUNT(*), COALESCE(SUM(v), 0), %s FROM %%s GROUP BY %s ORDER BY %s' \
            % (columns, counts, columns, columns)
        if isinstance(database, SqliteDatabase):
            # SQLite would copy v's expression into every bucket's CASE; made
            # once, a scrape of 100,000 runs takes a fifth of the time.
            sql = 'WITH finished AS MATERIALIZED (%s) %s' % (finished, totals % 'finished')
        else:
            sql = totals % ('(%s) AS finished' % finished)
        family = HistogramMetricFamily(name, documentation, labels=labels)
        for row in database.execute_sql(sql, params).fetchall():
            keys, count, total, cumulative = (row[:len(labels)], row[len(labels)],
                                              row[len(labels) + 1], row[len(labels) + 2:])
            pairs = [(_bound(bound), int(c or 0)) for bound, c in zip(buckets, cumulative)]
            family.add_metric([str(key) for key in keys], pairs + [('+Inf', int(count))],
                              float(total))
        return family


def _bound(value):
    return '%s' % float(value)


def install_metrics(app, settings, registry):
    """Add `GET /metrics` to `app`. It takes an API token, or the scrape
    token `metrics_token`; with neither set it is open, like the rest of a
    server that then listens on loopback only."""
    prometheus = CollectorRegistry(auto_describe=False)
    prometheus.register(DatabaseCollector(settings, registry))
    tokens = list(settings.tokens) + ([settings.metrics_token] if settings.metrics_token
                                      else [])
    guard = TokenAuth(tokens)

    @app.get('/metrics', auth=False)  # its own check: API tokens or the scrape token
    def metrics():
        if tokens and not guard.allowed(request.get_header('Authorization', '')):
            raise Unauthorized('give an API token or NIGHTSHIFT_METRICS_TOKEN: '
                               '"Authorization: Bearer <token>"')
        return HTTPResponse(generate_latest(prometheus),
                            headers={'Content-Type': CONTENT_TYPE_LATEST})
