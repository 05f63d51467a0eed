"""The API's routes that act on runs: cancel, re-run, backfill (control.py).

`install_control` adds them to the app api.install_api builds; the guards
(token, browser checks, JSON errors) are that app's plugins.
"""
import json
import logging

import control
import history
import runviews
from errors import InputError, QueueUnavailable
from guards import json_response
from inputs import read_json_body
from logformat import run_fields
from models import Run, utcnow
from vocab import RunStatus, Trigger

logger = logging.getLogger('nightshift.server')

BACKFILL_FIELDS = ('from', 'to')


def install_control(app, settings, jobs, registry, enqueue):
    """`enqueue(run)` is the runs API's: it queues a committed run and
    answers 202 (or 503 when the queue is down)."""

    @app.post('/api/runs/<run_id:int>/cancel')
    def cancel_run(run_id):
        run = control.cancel_run(settings, jobs.store, run_id, by=history.who(settings))
        return json_response(200, runviews.run_as_dict(run))

    @app.post('/api/runs/<run_id:int>/rerun')
    def rerun(run_id):
        run = control.rerun(registry, settings, run_id, trigger=Trigger.WEB,
                            by=history.who(settings))
        answer = enqueue(run)
        answer.body = json.dumps(dict(json.loads(answer.body), rerun_of=run_id))
        return answer

    @app.post('/api/schedules/<name>/backfill')
    def backfill(name):
        body = read_json_body(settings.max_body_bytes)
        unknown = sorted(set(body) - set(BACKFILL_FIELDS))
        if unknown:
            raise InputError(unknown[0], 'unknown field; expected from, to',
                             code='unknown_field')
        created, report = control.backfill(registry, settings, name, body.get('from'),
                                           body.get('to'), now=utcnow())
        report['created'] = [dict(entry, status=queue(run))
                             for entry, run in zip(report['created'], created)]
        return json_response(200, report)

    def queue(run):
        """Queue one backfilled run; its status after."""
        if run.status != RunStatus.QUEUED:
            return run.status
        try:
            jobs.enqueue_run(run)
        except QueueUnavailable as exc:
            logger.warning('backfill: run %d not queued: %s', run.id, exc,
                           extra=run_fields(run.id, run.report))
            return Run.select(Run.status).where(Run.id == run.id).scalar()
        return RunStatus.QUEUED
